"""End to end on the MNIST files shipped with drug: the IDX loader, and a small MLP that learns."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

import drug as dg
from drug.datasets import mnist, read_idx


@pytest.mark.parametrize("split,n", [("train", 60000), ("test", 10000)])
def test_mnist_arrays(split, n):
    x, y = mnist(split)
    assert x.shape == (n, 784) and x.dtype == np.float32
    assert y.shape == (n,) and y.dtype == np.int32
    assert x.min() == 0.0 and x.max() == 1.0
    assert set(np.unique(y)) == set(range(10))
    assert 0.1 < x.mean() < 0.15  # MNIST's mean intensity is about 0.13
    counts = np.bincount(y, minlength=10)
    assert counts.min() > 0.08 * n and counts.max() < 0.12 * n  # roughly balanced classes


def test_mnist_unflattened_and_first_labels():
    x, y = mnist("train", flatten=False)
    assert x.shape == (60000, 1, 28, 28)
    assert y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]  # the well-known first training labels
    flat, _ = mnist("train")
    np.testing.assert_array_equal(x.reshape(60000, 784)[:100], flat[:100])


def test_mnist_unknown_split():
    with pytest.raises(ValueError, match="'train' or 'test'"):
        mnist("validation")


def test_read_idx():
    payload = np.arange(24, dtype=np.uint8)
    raw = b"\x00\x00\x08\x03" + struct.pack(">iii", 2, 3, 4) + payload.tobytes()
    out = read_idx(raw)
    assert out.shape == (2, 3, 4) and out.dtype == np.uint8
    np.testing.assert_array_equal(out.reshape(-1), payload)
    labels = read_idx(b"\x00\x00\x08\x01" + struct.pack(">i", 3) + bytes([7, 0, 9]))
    assert labels.tolist() == [7, 0, 9]


def test_read_idx_rejects_bad_files():
    with pytest.raises(ValueError, match="not an unsigned-byte IDX"):
        read_idx(b"\x00\x00\x0d\x01" + struct.pack(">i", 1) + b"\x00\x00\x00\x00")
    with pytest.raises(ValueError, match="header says"):
        read_idx(b"\x00\x00\x08\x01" + struct.pack(">i", 5) + bytes(3))


def test_shipped_files_are_idx():
    from drug.datasets import DATA

    raw = gzip.decompress((DATA / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes())
    assert raw[:4] == b"\x00\x00\x08\x01" and struct.unpack(">i", raw[4:8])[0] == 10000


def test_mlp_learns_mnist():
    x_train, y_train = mnist("train")
    x_test, y_test = mnist("test")
    x_train, y_train, x_test, y_test = x_train[:2000], y_train[:2000], x_test[:1000], y_test[:1000]

    g = dg.Graph(seed=0)
    x, y = g.input("x", (None, 784)), g.input("y", (None,), dtype="int32")
    w1, b1 = g.parameter("w1", (784, 64)), g.parameter("b1", (64,), init="zeros")
    w2, b2 = g.parameter("w2", (64, 10)), g.parameter("b2", (10,), init="zeros")
    logits = dg.relu(x @ w1 + b1) @ w2 + b2
    loss = dg.softmax_cross_entropy(logits, y)
    train = g.compile(loss=loss, optimizer=dg.Adam(lr=1e-3), backend="numpy")
    predict = g.compile(outputs=logits, backend="numpy")
    evaluate = g.compile(loss=loss, backend="numpy")

    initial = evaluate(x=x_train, y=y_train)
    assert abs(initial - np.log(10)) < 0.5, "an untrained net is near chance"
    losses = []
    # 4 passes: after 3 the test accuracy is only 0.81-0.82 (seeds 0-2), after 4 it is 0.84-0.85
    for _ in range(4):
        for i in range(0, len(x_train), 100):
            losses.append(train(x=x_train[i : i + 100], y=y_train[i : i + 100]))
    assert train.step_count == 80
    assert all(np.isfinite(losses))
    final = evaluate(x=x_train, y=y_train)
    assert final < 0.5 * initial, f"training loss fell from {initial:.3f} to only {final:.3f}"
    assert np.mean(losses[-20:]) < 0.6 * np.mean(losses[:20])

    accuracy = float(np.mean(predict(x=x_test).argmax(axis=1) == y_test))
    assert accuracy > 0.8, f"test accuracy {accuracy:.3f}"
