"""The benchmark workloads: shapes, FLOP and byte counts, and the shared initial data.

Every framework builds its model from the same arrays, generated once with NumPy from a seed:
parameters (Xavier-uniform weights, small uniform biases) and a few batches that the timed
steps cycle through. FLOPs count the multiply-adds of GEMMs and convolutions only (2 per
multiply-add), forward and the backward products a train step needs (no gradient for data).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

N_BATCHES = 4  # distinct batches the timed steps cycle through


@dataclass
class Data:
    params: dict[str, np.ndarray]
    batches: list[dict[str, np.ndarray]]


def _xavier(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int, fan_out: int) -> np.ndarray:
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape).astype(np.float32)


def _bias(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.uniform(-0.05, 0.05, size=(n,)).astype(np.float32)


@dataclass
class Workload:
    """Base: `unit` is what throughput counts per second; `items_per_step` how many per step."""

    name: str = ""
    unit: str = "samples/s"
    lr: float = 1e-3
    rtol: float = 2e-4  # losses must agree this closely (float32, different summation orders)
    atol: float = 1e-5
    trains: bool = True

    def make_data(self, seed: int = 0) -> Data:
        rng = np.random.default_rng(seed)
        params = self.init_params(rng)
        return Data(params, [self.make_batch(rng) for _ in range(N_BATCHES)])

    def init_params(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {}

    def make_batch(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        raise NotImplementedError

    @property
    def items_per_step(self) -> float:
        raise NotImplementedError

    @property
    def flops_per_step(self) -> float:
        raise NotImplementedError

    @property
    def bytes_per_step(self) -> float:
        return 0.0

    def describe(self) -> str:
        raise NotImplementedError


@dataclass
class Classifier(Workload):
    """Images (or feature vectors) of `input_shape` and integer labels over `classes`."""

    batch: int = 128
    classes: int = 10

    @property
    def input_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def make_batch(self, rng):
        x = rng.uniform(0.0, 1.0, size=(self.batch, *self.input_shape)).astype(np.float32)
        y = rng.integers(0, self.classes, size=(self.batch,)).astype(np.int32)
        return {"x": x, "y": y}

    @property
    def items_per_step(self):
        return self.batch


@dataclass
class MLP(Classifier):
    name: str = "mlp"
    sizes: tuple[int, ...] = (784, 512, 256, 10)
    batch: int = 128

    def __post_init__(self):
        self.classes = self.sizes[-1]

    def init_params(self, rng):
        params = {}
        for i, (fan_in, fan_out) in enumerate(zip(self.sizes, self.sizes[1:]), start=1):
            params[f"w{i}"] = _xavier(rng, (fan_in, fan_out), fan_in, fan_out)
            params[f"b{i}"] = _bias(rng, fan_out)
        return params

    @property
    def input_shape(self):
        return (self.sizes[0],)

    @property
    def flops_per_step(self):
        layers = [2.0 * self.batch * a * b for a, b in zip(self.sizes, self.sizes[1:])]
        return 3 * sum(layers) - layers[0]  # the first layer needs no input gradient

    def describe(self):
        return f"MLP {'-'.join(map(str, self.sizes))}, batch {self.batch}, softmax CE, Adam"


@dataclass
class CNN(Classifier):
    name: str = "cnn"
    batch: int = 128
    hw: int = 28
    channels: tuple[int, int, int] = (1, 16, 32)
    kernel: int = 5
    classes: int = 10

    def init_params(self, rng):
        c0, c1, c2 = self.channels
        k = self.kernel
        return {
            "c1": _xavier(rng, (c1, c0, k, k), c0 * k * k, c1 * k * k),
            "cb1": _bias(rng, c1),
            "c2": _xavier(rng, (c2, c1, k, k), c1 * k * k, c2 * k * k),
            "cb2": _bias(rng, c2),
            "w": _xavier(rng, (c2, self.classes), c2, self.classes),
            "b": _bias(rng, self.classes),
        }

    @property
    def input_shape(self):
        return (self.channels[0], self.hw, self.hw)

    @property
    def flops_per_step(self):
        c0, c1, c2 = self.channels
        pixels = self.batch * self.hw * self.hw * self.kernel**2
        conv1, conv2 = 2.0 * pixels * c0 * c1, 2.0 * pixels * c1 * c2
        dense = 2.0 * self.batch * c2 * self.classes
        return 2 * conv1 + 3 * conv2 + 3 * dense

    def describe(self):
        c0, c1, c2 = self.channels
        k = self.kernel
        return (
            f"conv {k}x{k} {c0}->{c1} same, relu, conv {k}x{k} {c1}->{c2} same, relu, global avg pool, "
            f"dense {self.classes}; batch {self.batch}, {self.hw}x{self.hw}, Adam"
        )


@dataclass(frozen=True)
class Block:
    """One residual block of the ResNet workload: conv-bn-relu, conv-bn, plus a shortcut that is
    the input itself or (projection) a strided 1x1 conv-bn; `hw` is its output's spatial size."""

    name: str
    channels: int
    filters: int
    stride: int
    projection: bool
    hw: int


@dataclass
class ResNet(Classifier):
    """examples/mnist_resnet.py's network: stem conv 3x3 + batch norm + relu, max pool 3x3/2,
    residual blocks (identity and strided 1x1 projection shortcuts), global average pool, dense.
    Batch norm in training mode (batch statistics, running statistics updated)."""

    name: str = "resnet"
    batch: int = 64
    hw: int = 28
    widths: tuple[int, ...] = (16, 32, 64)
    blocks_per_stage: int = 1
    classes: int = 10
    rtol: float = 5e-4  # batch statistics of float32 activations, three steps deep

    @property
    def input_shape(self):
        return (1, self.hw, self.hw)

    @property
    def stem_hw(self) -> int:
        return (self.hw + 2 - 3) // 2 + 1  # after the max pool

    def blocks(self) -> list[Block]:
        out, channels, hw = [], self.widths[0], self.stem_hw
        for stage, filters in enumerate(self.widths, start=1):
            for index in range(self.blocks_per_stage):
                stride = 2 if stage > 1 and index == 0 else 1
                hw = (hw + 2 - 3) // stride + 1
                projection = stride != 1 or channels != filters
                out.append(Block(f"stage{stage}/block{index + 1}", channels, filters, stride, projection, hw))
                channels = filters
        return out

    def convs(self) -> list[tuple[str, int, int, int, int]]:
        """(name, in channels, out channels, kernel, output size) of every convolution, stem first."""
        convs = [("stem", 1, self.widths[0], 3, self.hw)]
        for b in self.blocks():
            convs += [(f"{b.name}/a", b.channels, b.filters, 3, b.hw), (f"{b.name}/b", b.filters, b.filters, 3, b.hw)]
            if b.projection:
                convs.append((f"{b.name}/proj", b.channels, b.filters, 1, b.hw))
        return convs

    def init_params(self, rng):
        params = {}
        for name, cin, cout, k, _ in self.convs():
            params[f"{name}/w"] = _xavier(rng, (cout, cin, k, k), cin * k * k, cout * k * k)
            params[f"{name}/scale"] = np.ones(cout, np.float32)
            params[f"{name}/bias"] = np.zeros(cout, np.float32)
        params["head/w"] = _xavier(rng, (self.widths[-1], self.classes), self.widths[-1], self.classes)
        params["head/b"] = _bias(rng, self.classes)
        return params

    @property
    def flops_per_step(self):
        total = 0.0
        for name, cin, cout, k, hw in self.convs():
            conv = 2.0 * self.batch * hw * hw * cin * cout * k * k
            total += conv * (2 if name == "stem" else 3)  # the stem needs no input gradient
        return total + 3 * 2.0 * self.batch * self.widths[-1] * self.classes

    def describe(self):
        return (
            f"ResNet: conv 3x3 + batch norm stem, max pool 3x3/2, {len(self.blocks())} residual blocks "
            f"{'-'.join(map(str, self.widths))} (identity and 1x1/2 projection shortcuts), global avg pool, "
            f"dense {self.classes}; batch {self.batch}, {self.hw}x{self.hw}, Adam"
        )


@dataclass
class LanguageModel(Workload):
    """Base: `batch` windows of `seq` random token ids and their next tokens."""

    unit: str = "tokens/s"
    vocab: int = 50
    seq: int = 32
    batch: int = 32
    rtol: float = 5e-4

    def make_batch(self, rng):
        text = rng.integers(0, self.vocab, size=(self.batch, self.seq + 1)).astype(np.int32)
        return {"ids": np.ascontiguousarray(text[:, :-1]), "targets": np.ascontiguousarray(text[:, 1:])}

    @property
    def items_per_step(self):
        return self.batch * self.seq


@dataclass
class GRU(LanguageModel):
    """Character GRU language model; gates in PyTorch's order and formula (r, z, n)."""

    name: str = "gru"
    embed: int = 32
    hidden: int = 128

    def init_params(self, rng):
        v, e, h = self.vocab, self.embed, self.hidden
        return {
            "emb": rng.uniform(-0.1, 0.1, size=(v, e)).astype(np.float32),
            "w_x": _xavier(rng, (e, 3 * h), e, h),
            "b_x": _bias(rng, 3 * h),
            "w_h": _xavier(rng, (h, 3 * h), h, h),
            "b_h": _bias(rng, 3 * h),
            "w_out": _xavier(rng, (h, v), h, v),
            "b_out": _bias(rng, v),
        }

    @property
    def flops_per_step(self):
        h = self.hidden
        per_token = 2.0 * (self.embed * 3 * h + h * 3 * h + h * self.vocab)
        return 3 * per_token * self.batch * self.seq

    def describe(self):
        return (
            f"char GRU LM: vocab {self.vocab}, embedding {self.embed}, hidden {self.hidden}, "
            f"sequence {self.seq}, batch {self.batch}, Adam"
        )


@dataclass
class Transformer(LanguageModel):
    """A one-block pre-norm transformer language model: token and learned position embeddings,
    layer norm, causal multi-head attention, residual, layer norm, GELU MLP (4d, exact GELU),
    residual, final layer norm and a linear head to the vocabulary; cross-entropy, Adam."""

    name: str = "transformer"
    vocab: int = 64
    dim: int = 128
    heads: int = 4
    seq: int = 128

    def init_params(self, rng):
        v, d, t = self.vocab, self.dim, self.seq
        params = {"emb": rng.uniform(-0.1, 0.1, size=(v, d)).astype(np.float32)}
        params["pos"] = rng.uniform(-0.1, 0.1, size=(t, d)).astype(np.float32)
        for norm in ("ln1", "ln2", "lnf"):
            params[f"{norm}_scale"] = (1.0 + _bias(rng, d)).astype(np.float32)
            params[f"{norm}_bias"] = _bias(rng, d)
        for role in ("q", "k", "v", "o"):
            params[f"w_{role}"] = _xavier(rng, (d, d), d, d)
            params[f"b_{role}"] = _bias(rng, d)
        params["w_1"], params["b_1"] = _xavier(rng, (d, 4 * d), d, 4 * d), _bias(rng, 4 * d)
        params["w_2"], params["b_2"] = _xavier(rng, (4 * d, d), 4 * d, d), _bias(rng, d)
        params["w_out"], params["b_out"] = _xavier(rng, (d, v), d, v), _bias(rng, v)
        return params

    @property
    def flops_per_step(self):
        d, t = self.dim, self.seq
        per_token = 2.0 * (4 * d * d + 8 * d * d + d * self.vocab) + 2.0 * 2 * t * d  # projections, MLP, head; qk, pv
        return 3 * per_token * self.batch * t

    def describe(self):
        return (
            f"transformer block LM: vocab {self.vocab}, d {self.dim}, {self.heads} heads, causal, GELU MLP 4d, "
            f"sequence {self.seq}, batch {self.batch}, Adam"
        )


@dataclass
class Fusion(Workload):
    """relu(a*b + c) * d - e: five reads and one write of float32 per element."""

    name: str = "fusion"
    unit: str = "GB/s"
    n: int = 4 * 1024 * 1024
    trains: bool = False
    rtol: float = 1e-5
    names: tuple[str, ...] = field(default=("a", "b", "c", "d", "e"))

    def make_batch(self, rng):
        return {k: rng.standard_normal(self.n, dtype=np.float32) for k in self.names}

    def make_data(self, seed: int = 0) -> Data:
        # one batch: the arrays are large, and an elementwise kernel has nothing to memorize
        return Data({}, [self.make_batch(np.random.default_rng(seed))])

    @property
    def items_per_step(self):
        return self.bytes_per_step / 1e9  # throughput in GB/s

    @property
    def flops_per_step(self):
        return 5.0 * self.n

    @property
    def bytes_per_step(self):
        return 6.0 * 4 * self.n

    def describe(self):
        return f"relu(a*b + c) * d - e over {self.n / 2**20:g}M float32"

    @staticmethod
    def reference(a, b, c, d, e):
        return np.maximum(a * b + c, 0) * d - e

    @staticmethod
    def checksum(out: np.ndarray) -> list[float]:
        """Summaries of an output (of any shape: inference workloads use them too) that a wrong
        kernel would not reproduce."""
        out = np.asarray(out, dtype=np.float64).reshape(-1)
        ramp = np.linspace(-1.0, 1.0, out.size)
        return [float(out.mean()), float(np.abs(out).mean()), float(out @ ramp / out.size)]


@dataclass
class OnnxInference(Workload):
    """Inference of a model read from an ONNX file (bench/onnx_file.py writes it from `model`'s
    parameters): drug imports and compiles it, onnxruntime runs the same file."""

    name: str = "onnx-mlp-b1"
    model: Classifier = field(default_factory=MLP)  # the MLP or CNN whose forward pass the file holds
    batch: int = 1
    trains: bool = False
    rtol: float = 1e-5

    def make_data(self, seed: int = 0) -> Data:
        rng = np.random.default_rng(seed)
        params = self.model.init_params(rng)
        shape = (self.batch, *self.model.input_shape)
        return Data(params, [{"x": rng.uniform(0.0, 1.0, size=shape).astype(np.float32)} for _ in range(N_BATCHES)])

    @property
    def items_per_step(self):
        return self.batch

    @property
    def flops_per_step(self):
        m = self.model
        if isinstance(m, MLP):
            return sum(2.0 * self.batch * a * b for a, b in zip(m.sizes, m.sizes[1:]))
        c0, c1, c2 = m.channels
        pixels = self.batch * m.hw * m.hw * m.kernel**2
        return 2.0 * pixels * (c0 * c1 + c1 * c2) + 2.0 * self.batch * c2 * m.classes

    def describe(self):
        if isinstance(self.model, MLP):
            model = f"MLP {'-'.join(map(str, self.model.sizes))}"
        else:
            c0, c1, c2 = self.model.channels
            model = f"CNN conv{self.model.kernel} {c0}->{c1}->{c2} {self.model.hw}x{self.model.hw}, avg pool, dense"
        return f"ONNX inference: {model}, batch {self.batch} (drug imports it, weights constant; onnxruntime runs it)"


def _onnx_workloads(mlp: MLP, cnn: CNN) -> list[OnnxInference]:
    return [
        OnnxInference(name=f"onnx-{model.name}-b{batch}", model=model, batch=batch)
        for model in (mlp, cnn)
        for batch in (1, 64)
    ]


def full_suite() -> dict[str, Workload]:
    return {w.name: w for w in (MLP(), CNN(), ResNet(), GRU(), Transformer(), Fusion(), *_onnx_workloads(MLP(), CNN()))}


def tiny_suite() -> dict[str, Workload]:
    """Small shapes for tests and smoke runs: the same models, seconds instead of minutes."""
    return {
        w.name: w
        for w in (
            MLP(sizes=(64, 32, 16, 10), batch=16),
            CNN(batch=4, hw=8, channels=(1, 4, 8)),
            ResNet(batch=4, hw=8, widths=(4, 8)),
            GRU(vocab=11, embed=8, hidden=16, seq=6, batch=4),
            Transformer(vocab=11, dim=16, heads=2, seq=8, batch=4),
            Fusion(n=65536),
            *_onnx_workloads(MLP(sizes=(64, 32, 16, 10)), CNN(hw=8, channels=(1, 4, 8))),
        )
    }


SIZES = {"full": full_suite, "tiny": tiny_suite}
MODEL_WORKLOADS = ("mlp", "cnn", "resnet", "gru", "transformer", "fusion")
ONNX_WORKLOADS = tuple(w.name for w in _onnx_workloads(MLP(), CNN()))  # `--only onnx`: all of them
ALL_WORKLOADS = MODEL_WORKLOADS + ("compile",)  # the default run (the onnx ones need the onnx extra)


def suite(size: str = "full") -> dict[str, Workload]:
    return SIZES[size]()
