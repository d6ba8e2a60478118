"""Round trips from PyTorch: models made here, written by torch.onnx.export (both of its exporters:
the TorchScript one and the default torch.export one), imported by drug; drug's outputs equal
PyTorch's and onnxruntime's within float32 tolerance, for batch sizes other than the exported one."""

from __future__ import annotations

import warnings

import pytest

pytest.importorskip("onnx", reason="the onnx extra is not installed (make install-onnx)")
pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (make install-onnx)")
torch = pytest.importorskip("torch", reason="PyTorch is not installed (make install-bench)")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx_models import ATOL, RTOL, run_onnxruntime  # noqa: E402

import drug as dg  # noqa: E402
import drug.onnx  # noqa: E402

EXPORTERS = ["torchscript", "dynamo"]


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16), torch.nn.Tanh(), torch.nn.Linear(16, 5)
        )

    def forward(self, x):
        return torch.log_softmax(self.layers(x), dim=-1)


class CNN(torch.nn.Module):
    """Conv + batch norm + pooling + a strided conv + flatten + linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(8)
        self.conv2 = torch.nn.Conv2d(8, 16, 3, stride=2)
        self.bn2 = torch.nn.BatchNorm2d(16)
        self.fc = torch.nn.Linear(16 * 3 * 3, 10)

    def forward(self, x):
        h = torch.nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        h = torch.relu(self.bn2(self.conv2(h)))
        return self.fc(h.flatten(1))


class TransformerBlock(torch.nn.Module):
    """Pre-norm self-attention and MLP blocks, heads split by reshapes that read the batch size."""

    def __init__(self, d=32, heads=4, activation="gelu"):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
        self.qkv, self.proj = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)
        self.fc1, self.fc2 = torch.nn.Linear(d, 4 * d), torch.nn.Linear(4 * d, d)
        self.act = torch.nn.GELU() if activation == "gelu" else torch.nn.ReLU()

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        attention = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, dim=-1)
        x = x + self.proj((attention @ v).transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(self.act(self.fc1(self.ln2(x))))


class CausalSelfAttention(torch.nn.Module):
    """scaled_dot_product_attention with a causal mask (the exporters write the mask as constants)."""

    def __init__(self, d=16, heads=4):
        super().__init__()
        self.heads, self.qkv, self.proj = heads, torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (z.reshape(b, t, self.heads, d // self.heads).transpose(1, 2) for z in self.qkv(x).chunk(3, -1))
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


def _randomize_batch_norm(module: torch.nn.Module, seed: int) -> None:
    """Running statistics and affine parameters away from their initial 0/1, so they matter."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.2)


def export(module: torch.nn.Module, example: torch.Tensor, exporter: str, path, keep_batch_norm=False):
    """torch.onnx.export with a dynamic batch. By default the exporters fold batch norm into the
    convolutions before it; `keep_batch_norm` writes BatchNormalization nodes instead."""
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            pytest.importorskip("onnxscript", reason="torch.onnx.export(dynamo=True) needs onnxscript")
            batch = torch.export.Dim("batch", min=1, max=1024)
            torch.onnx.export(
                module, (example,), path, dynamo=True, input_names=["x"], output_names=["y"],
                dynamic_shapes=({0: batch},), optimize=not keep_batch_norm, verbose=False,
            )  # fmt: skip
        else:
            torch.onnx.export(
                module, (example,), path, dynamo=False, input_names=["x"], output_names=["y"],
                dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, do_constant_folding=not keep_batch_norm,
                opset_version=18,
            )  # fmt: skip
    return onnx.load(path)


def check_round_trip(module, example_shape, exporter, tmp_path, batches=(1, 5), keep_batch_norm=False):
    torch.manual_seed(0)
    path = tmp_path / "model.onnx"
    onnx_model = export(module, torch.randn(3, *example_shape), exporter, path, keep_batch_norm)
    graph, inputs, outputs = drug.onnx.load(path)
    assert inputs["x"].shape == (None, *example_shape)
    predict = graph.compile(outputs=outputs["y"])
    for batch in batches:
        x = torch.randn(batch, *example_shape)
        with torch.no_grad():
            expected = module(x).numpy()
        got = predict(x=x.numpy())
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(got, run_onnxruntime(onnx_model, {"x": x.numpy()})[0], rtol=RTOL, atol=ATOL)
    return graph


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_mlp(exporter, tmp_path):
    torch.manual_seed(1)
    graph = check_round_trip(MLP(), (20,), exporter, tmp_path)
    assert len(graph.params) == 6  # three weights and three biases, trainable


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("keep_batch_norm", [True, False], ids=["batch-norm-nodes", "batch-norm-folded"])
def test_cnn_with_batch_norm(exporter, keep_batch_norm, tmp_path):
    torch.manual_seed(2)
    cnn = CNN()
    _randomize_batch_norm(cnn, 3)
    graph = check_round_trip(cnn, (3, 14, 14), exporter, tmp_path, keep_batch_norm=keep_batch_norm)
    # kept, the running statistics are state buffers (not trained); folded, they are in the weights
    assert len(graph.state) == (4 if keep_batch_norm else 0)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_transformer_block(exporter, activation, tmp_path):
    needed = {"gelu": {"Erf"}}.get(activation, set())
    missing = needed - set(drug.onnx.SUPPORTED_OPS)
    if missing:
        pytest.skip(f"drug.onnx does not import {sorted(missing)} yet (needs erf among drug's ops)")
    torch.manual_seed(4)
    check_round_trip(TransformerBlock(activation=activation), (6, 32), exporter, tmp_path)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_causal_scaled_dot_product_attention(exporter, tmp_path):
    torch.manual_seed(6)
    check_round_trip(CausalSelfAttention(), (5, 16), exporter, tmp_path)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_multihead_attention_module_is_refused_by_name(exporter, tmp_path):
    """nn.MultiheadAttention reshapes to (batch * heads, ...): drug keeps the batch an axis of its
    own, and says so naming the node."""

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = torch.nn.MultiheadAttention(16, 4, batch_first=True)

        def forward(self, x):
            return self.attention(x, x, x, need_weights=False)[0]

    path = tmp_path / "mha.onnx"
    export(Block(), torch.randn(3, 5, 16), exporter, path)
    with pytest.raises(dg.GraphError, match=rf"{path}: node '[^']+' \((Mul|Reshape)\): .*batch"):
        drug.onnx.load(path)


def test_imported_pytorch_model_fine_tunes(tmp_path):
    torch.manual_seed(5)
    path = tmp_path / "mlp.onnx"
    export(MLP(), torch.randn(3, 20), "torchscript", path)
    graph, _, outputs = drug.onnx.load(path)
    labels = graph.input("labels", (None,), dtype="int32")
    # the model ends in log_softmax: the mean negative log-likelihood of the labels
    loss = dg.softmax_cross_entropy(outputs["y"], labels)
    train = graph.compile(loss=loss, optimizer=dg.Adam(lr=3e-3))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((128, 20)).astype(np.float32)
    y = np.argmax(x[:, :5], axis=1).astype(np.int32)
    losses = [train(x=x, labels=y) for _ in range(80)]
    assert losses[-1] < 0.5 * losses[0]
