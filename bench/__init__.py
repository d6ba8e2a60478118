"""drug-bench: drug against NumPy, PyTorch and JAX on the same workloads, in one process."""
