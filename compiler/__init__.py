"""Target-independent passes, each Program -> Program, run in one ordered list (passes.py):
verify, shapes, autodiff, optimizer, prune, then a backend's simplify, fuse, schedule. Also the
higher-order ops built on them: scan (loops with graph bodies) and traced elementwise functions."""
