"""drug-compile: a graph's train step and predictor as a native library callable from C or any FFI.

    drug-compile model.py --out build/ [--name mlp] [--target-cpu host|generic|<cpu>]
                 [--blas-int 32|64] [--max-batch N] [--checkpoint ckpt.npz]
    drug-compile model.onnx --out build/ [--dim NAME=SIZE ...]

model.py (or a module, `drug-compile pkg.model`) defines build(), which returns a dict (or a
drug.aot.CompileSpec) with:
    graph      the dg.Graph (its current parameter values become the library's initial values)
    loss       a scalar node; with `optimizer` the library gets drug_<name>_train_step
    optimizer  e.g. dg.Adam(lr=1e-3)
    outputs    a node or a list of nodes; the library gets drug_<name>_predict
    params     optional: train only these parameters (as g.compile(params=...))

    def build():
        g = dg.Graph(seed=0)
        x, y = g.input("x", (None, 784)), g.input("y", (None,), dtype="int32")
        ...
        return dict(graph=g, loss=dg.softmax_cross_entropy(logits, y), optimizer=dg.Adam(1e-3), outputs=[logits])

An ONNX file (the `onnx` extra: pip install 'drug[onnx]') becomes a predictor library: it is
imported with drug.onnx.load (axis 0 of the inputs is the batch; --dim gives sizes to other
symbolic dimensions), its initializers are the library's parameters and its outputs predict's.

The --out directory receives lib<name>.so, <name>.h (the documented C API: create/destroy,
train_step, predict, parameters by name, learning rate, checkpoints in the format of Python's
train.save(), error codes with messages) and <name>.json (inputs, outputs, parameters, arena
sizes, target CPU, drug version). The library needs no Python: its matrix products run drug's own
sgemm, tiled for the target CPU, which hands a few shapes (a column vector, an empty inner
dimension) to the CBLAS sgemm given to drug_<name>_create (LP64 by default, --blas-int 64 for
ILP64); beyond that it calls libc and libm. Loops run
serially (no OpenMP runtime); ops without a native kernel (Python callbacks) are refused."""

from .build import Outputs, compile_library
from .spec import CompileSpec, load_spec
