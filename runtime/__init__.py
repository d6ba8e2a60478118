"""Compiled functions, feeds, checkpoints and the executors (reference and native)."""
