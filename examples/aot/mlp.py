"""The MNIST MLP of `make demo` (784-512-256-10, Adam) for drug-compile: `make aot-demo` compiles it
into build/aot/libmlp.so, which examples/aot/mnist_train.c trains and evaluates from C."""

from __future__ import annotations

import drug as dg


def build(seed: int = 0) -> dict:
    g = dg.Graph(seed=seed)
    x = g.input("x", (None, 784))
    y = g.input("y", (None,), dtype="int32")
    h, width = x, 784
    for i, size in enumerate([512, 256], start=1):
        w = g.parameter(f"w{i}", (width, size))
        b = g.parameter(f"b{i}", (size,), init="zeros")
        h, width = dg.relu(h @ w + b), size
    logits = h @ g.parameter("w_out", (width, 10)) + g.parameter("b_out", (10,), init="zeros")
    loss = dg.softmax_cross_entropy(logits, y)
    return dict(graph=g, loss=loss, optimizer=dg.Adam(lr=3e-3), outputs=[logits.named("logits")])
