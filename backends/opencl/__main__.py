"""`python -m drug.backends.opencl`: the OpenCL devices drug can run on, by index."""

from . import runtime

print(runtime("device").listing())
