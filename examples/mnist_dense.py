"""Train a multilayer perceptron on MNIST with drug's graph API and report test accuracy."""

from __future__ import annotations

import argparse
import time

import numpy as np
from tqdm import tqdm

import drug as dg
from drug.datasets import mnist


def build(hidden: list[int], seed: int):
    g = dg.Graph(seed=seed)
    x = g.input("x", (None, 784))
    y = g.input("y", (None,), dtype="int32")
    h, width = x, 784
    for i, size in enumerate(hidden, start=1):
        w = g.parameter(f"w{i}", (width, size))
        b = g.parameter(f"b{i}", (size,), init="zeros")
        h, width = dg.relu(h @ w + b), size
    w = g.parameter("w_out", (width, 10))
    b = g.parameter("b_out", (10,), init="zeros")
    logits = h @ w + b
    return g, logits, dg.softmax_cross_entropy(logits, y)


def accuracy(predict, x: np.ndarray, y: np.ndarray, batch: int = 1000) -> float:
    correct = sum(
        int((predict(x=x[i : i + batch]).argmax(1) == y[i : i + batch]).sum()) for i in range(0, len(x), batch)
    )
    return correct / len(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate, decayed linearly to 0")
    parser.add_argument("--hidden", type=int, nargs="*", default=[512, 256])
    parser.add_argument("--backend", choices=["numpy", "llvm"], default=None, help="default: drug's default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="a few batches on a slice, for tests")
    parser.add_argument("--save", help="write a checkpoint here at the end")
    parser.add_argument("--resume", help="start from this checkpoint")
    args = parser.parse_args()

    x_train, y_train = mnist("train")
    x_test, y_test = mnist("test")
    if args.smoke:
        x_train, y_train, x_test, y_test = x_train[:1024], y_train[:1024], x_test[:500], y_test[:500]
    g, logits, loss = build(args.hidden, args.seed)
    train = g.compile(loss=loss, optimizer=dg.Adam(lr=args.lr), backend=args.backend)
    predict = g.compile(outputs=logits, backend=args.backend)
    if args.resume:
        train.load(args.resume)
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    total_steps = args.epochs * -(-len(x_train) // args.batch)
    step = 0
    for epoch in range(1, args.epochs + 1):
        order = rng.permutation(len(x_train))
        losses = []
        bar = tqdm(range(0, len(order), args.batch), desc=f"epoch {epoch}", unit="batch", leave=False)
        for i in bar:
            idx = order[i : i + args.batch]
            train.lr = args.lr * (1 - step / total_steps)  # linear decay to zero
            step += 1
            losses.append(train(x=x_train[idx], y=y_train[idx]))
            if len(losses) % 20 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        print(f"epoch {epoch}: mean loss {np.mean(losses):.4f}, test accuracy {accuracy(predict, x_test, y_test):.4f}")
    seconds = time.perf_counter() - start
    if args.save:
        train.save(args.save)
    acc = accuracy(predict, x_test, y_test)
    print(f"summary: test accuracy {acc:.4f} after {args.epochs} epoch(s), {seconds:.1f} s, backend {train.backend}")


if __name__ == "__main__":
    main()
