"""Train a multilayer perceptron on MNIST with drug's layers and report test accuracy."""

from __future__ import annotations

import time

import numpy as np
from common import example_parser, linear_decay, minibatches, plot_curves
from tqdm import tqdm

import drug as dg
from drug.datasets import mnist


def build(hidden: list[int], seed: int):
    g = dg.Graph(seed=seed)
    x = g.input("x", (None, 784))
    y = g.input("y", (None,), dtype="int32")
    h = x
    for i, size in enumerate(hidden, start=1):
        h = dg.layers.Dense(size, activation="relu", name=f"fc{i}")(h)
    logits = dg.layers.Dense(10, name="out")(h)
    return g, logits, dg.softmax_cross_entropy(logits, y)


def accuracy(predict, x: np.ndarray, y: np.ndarray, batch: int = 1000) -> float:
    correct = sum(
        int((predict(x=x[i : i + batch]).argmax(1) == y[i : i + batch]).sum()) for i in range(0, len(x), batch)
    )
    return correct / len(x)


def main() -> None:
    parser = example_parser(__doc__, epochs=5, batch=128, lr=3e-3)
    parser.add_argument("--hidden", type=int, nargs="*", default=[512, 256])
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
    total_steps = args.epochs * -(-len(x_train) // args.batch)
    step, losses, curve = 0, [], {"train loss": ([], []), "test accuracy": ([], [])}
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        epoch_losses = []
        bar = tqdm(minibatches(len(x_train), args.batch, rng), desc=f"epoch {epoch}", unit="batch", leave=False)
        for idx in bar:
            train.lr = linear_decay(args.lr, step, total_steps)
            step += 1
            epoch_losses.append(train(x=x_train[idx], y=y_train[idx]))
            if step % 20 == 0:
                bar.set_postfix(loss=f"{np.mean(epoch_losses[-20:]):.4f}")
                curve["train loss"][0].append(step)
                curve["train loss"][1].append(float(np.mean(epoch_losses[-20:])))
        acc = accuracy(predict, x_test, y_test)
        curve["test accuracy"][0].append(step)
        curve["test accuracy"][1].append(acc)
        losses.append(float(np.mean(epoch_losses)))
        print(f"epoch {epoch}: mean loss {losses[-1]:.4f}, test accuracy {acc:.4f}")
    seconds = time.perf_counter() - start
    if args.save:
        train.save(args.save)
    if args.plot:
        plot_curves(args.plot, curve, "step", "MNIST MLP")
    print(
        f"summary: test accuracy {accuracy(predict, x_test, y_test):.4f} after {args.epochs} epoch(s), "
        f"{seconds:.1f} s ({seconds / args.epochs:.1f} s/epoch), backend {train.backend}"
    )


if __name__ == "__main__":
    main()
