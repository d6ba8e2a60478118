"""drug: each workload declared with the graph API and compiled once, whole train step included."""

from __future__ import annotations

import sys

import drug as dg
from drug.ops.attention import attention_packed

from ..workloads import CNN, GRU, MLP, Data, Fusion, OnnxInference, ResNet, Transformer, Workload
from .base import Peer, Unsupported

FALLBACK_ERRORS = (ImportError, NotImplementedError)


def available() -> str | None:
    return None


def compile_graph(g: dg.Graph, backend: str, notes: list[str] | None = None, **kwargs):
    """`g.compile(backend=...)`, falling back to the NumPy backend while the native one is missing.
    Returns (compiled function, backend actually used)."""
    try:
        fn = g.compile(backend=backend, **kwargs)
        return fn, fn.device
    except FALLBACK_ERRORS as error:
        if backend == "numpy":
            raise
        note = f"drug backend {backend!r} unavailable ({type(error).__name__}: {error}); using 'numpy'"
        if notes is not None and note not in notes:
            notes.append(note)
            print(f"note: {note}", file=sys.stderr)
        return g.compile(backend="numpy", **kwargs), "numpy"


def _param(g: dg.Graph, data: Data, name: str):
    return g.parameter(name, data.params[name].shape, init=data.params[name])


def build_mlp(w: MLP, data: Data, g: dg.Graph):
    x = g.input("x", (None, w.sizes[0]))
    y = g.input("y", (None,), dtype="int32")
    h = x
    for i in range(1, len(w.sizes)):
        h = h @ _param(g, data, f"w{i}") + _param(g, data, f"b{i}")
        if i < len(w.sizes) - 1:
            h = dg.relu(h)
    return dg.softmax_cross_entropy(h, y)


def _conv_relu(x, weight, bias):
    out = dg.conv2d(x, weight, padding="same", pad_mode="zeros")
    return dg.relu(out + dg.reshape(bias, (bias.shape[0], 1, 1)))


def build_cnn(w: CNN, data: Data, g: dg.Graph):
    x = g.input("x", (None, w.channels[0], w.hw, w.hw))
    y = g.input("y", (None,), dtype="int32")
    h = _conv_relu(x, _param(g, data, "c1"), _param(g, data, "cb1"))
    h = _conv_relu(h, _param(g, data, "c2"), _param(g, data, "cb2"))
    logits = dg.global_pool(h, "avg") @ _param(g, data, "w") + _param(g, data, "b")
    return dg.softmax_cross_entropy(logits, y)


def build_resnet(w: ResNet, data: Data, g: dg.Graph):
    x = g.input("x", (None, *w.input_shape))
    y = g.input("y", (None,), dtype="int32")

    def conv_bn(h, name: str, stride: int):
        weight = _param(g, data, f"{name}/w")
        h = dg.conv2d(h, weight, stride=stride, padding=weight.shape[-1] // 2)
        return dg.batch_norm(h, _param(g, data, f"{name}/scale"), _param(g, data, f"{name}/bias"), name=name)

    h = dg.max_pool2d(dg.relu(conv_bn(x, "stem", 1)), 3, stride=2, padding=1)
    for block in w.blocks():
        out = conv_bn(dg.relu(conv_bn(h, f"{block.name}/a", block.stride)), f"{block.name}/b", 1)
        h = dg.relu(out + (conv_bn(h, f"{block.name}/proj", block.stride) if block.projection else h))
    logits = dg.global_pool(h, "avg") @ _param(g, data, "head/w") + _param(g, data, "head/b")
    return dg.softmax_cross_entropy(logits, y)


def build_gru(w: GRU, data: Data, g: dg.Graph):
    ids = g.input("ids", (None, w.seq), dtype="int32")
    targets = g.input("targets", (None, w.seq), dtype="int32")
    p = {name: _param(g, data, name) for name in data.params}
    H = w.hidden
    xproj = dg.embedding(ids, p["emb"]) @ p["w_x"] + p["b_x"]  # (batch, seq, 3H), all steps at once
    h, states = None, []
    for t in range(w.seq):
        gx = xproj[:, t, :]
        gh = p["b_h"] if h is None else h @ p["w_h"] + p["b_h"]  # h0 = 0
        r = dg.sigmoid(gx[:, :H] + gh[..., :H])
        z = dg.sigmoid(gx[:, H : 2 * H] + gh[..., H : 2 * H])
        n = dg.tanh(gx[:, 2 * H :] + r * gh[..., 2 * H :])
        h = (1.0 - z) * n if h is None else (1.0 - z) * n + z * h
        states.append(dg.reshape(h, (None, 1, H)))
    logits = dg.concat(states, axis=1) @ p["w_out"] + p["b_out"]  # (batch, seq, vocab)
    return dg.softmax_cross_entropy(logits, targets)


def build_transformer(w: Transformer, data: Data, g: dg.Graph):
    ids = g.input("ids", (None, w.seq), dtype="int32")
    targets = g.input("targets", (None, w.seq), dtype="int32")
    p = {name: _param(g, data, name) for name in data.params}
    heads, dh = w.heads, w.dim // w.heads

    def norm(x, name):
        return dg.layer_norm(x) * p[f"{name}_scale"] + p[f"{name}_bias"]

    x = dg.embedding(ids, p["emb"]) + p["pos"]
    h = norm(x, "ln1")  # q, k and v from one projection, which attention reads in place (as the layer does)
    qkv = h @ dg.concat([p["w_q"], p["w_k"], p["w_v"]], axis=1) + dg.concat([p["b_q"], p["b_k"], p["b_v"]])
    a = attention_packed(dg.reshape(qkv, (None, w.seq, 3, heads, dh)), causal=True)
    x = x + dg.reshape(a, (None, w.seq, w.dim)) @ p["w_o"] + p["b_o"]
    x = x + dg.gelu(norm(x, "ln2") @ p["w_1"] + p["b_1"]) @ p["w_2"] + p["b_2"]
    logits = norm(x, "lnf") @ p["w_out"] + p["b_out"]
    return dg.softmax_cross_entropy(logits, targets)


def build_fusion(w: Fusion, g: dg.Graph):
    a, b, c, d, e = (g.input(name, (w.n,)) for name in w.names)
    return dg.relu(a * b + c) * d - e


BUILDERS = {
    "mlp": build_mlp, "cnn": build_cnn, "resnet": build_resnet, "gru": build_gru, "transformer": build_transformer,
}  # fmt: skip


def build_and_compile(workload: Workload, data: Data, backend: str, notes: list[str] | None = None):
    """A fresh graph for `workload` and its compiled step: (function, backend used)."""
    if isinstance(workload, OnnxInference):
        return compile_onnx(workload, data, backend, notes)
    g = dg.Graph(seed=0)
    if isinstance(workload, Fusion):
        return compile_graph(g, backend, notes, outputs=build_fusion(workload, g))
    if workload.name not in BUILDERS:
        raise Unsupported(workload.name)
    loss = BUILDERS[workload.name](workload, data, g)
    return compile_graph(g, backend, notes, loss=loss, optimizer=dg.Adam(lr=workload.lr))


def compile_onnx(workload: OnnxInference, data: Data, backend: str, notes: list[str] | None):
    """The workload's ONNX file imported by drug.onnx and compiled as a predictor."""
    import drug.onnx  # the onnx extra: imported only for these workloads

    from ..onnx_file import model_file

    # fixed weights, as onnxruntime's session holds the file's initializers (both pack them once)
    imported = drug.onnx.load(model_file(workload, data), initializers="constants")
    return compile_graph(imported.graph, backend, notes, outputs=imported.outputs["logits"])


class DrugPeer(Peer):
    name = "drug"
    compiles = True

    def __init__(self, workload: Workload, data: Data, backend: str = "llvm", notes: list[str] | None = None):
        super().__init__(workload, data)
        self.fn, self.backend = build_and_compile(workload, data, backend, notes)

    def run(self, batch):
        return self.fn(batch)


def build(workload: Workload, data: Data, backend: str = "llvm", notes: list[str] | None = None) -> Peer:
    return DrugPeer(workload, data, backend, notes)
