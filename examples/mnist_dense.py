"""Train a multilayer perceptron on MNIST with drug's layers and report test accuracy.

Data-parallel over MPI: `mpirun -np 2 python examples/mnist_dense.py --distributed`. --batch is
then the global batch: every rank takes batch/ranks samples of each shuffled batch (all ranks
shuffle with the same seed), so the run follows the single-process one up to float rounding."""

from __future__ import annotations

import time

import numpy as np
from common import accuracy, batch_count, example_parser, linear_decay, minibatches, plot_curves, track_loss
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


def main() -> None:
    parser = example_parser(__doc__, epochs=5, batch=128, lr=3e-3)
    parser.add_argument("--hidden", type=int, nargs="*", default=[512, 256])
    parser.add_argument("--distributed", action="store_true", help="data-parallel over the ranks of mpirun")
    args = parser.parse_args()
    dist = dg.distributed.init() if args.distributed else None
    if dist is not None and args.batch % dist.size:
        parser.error(f"--batch {args.batch} (the global batch) is not a multiple of the {dist.size} ranks")
    root = dist is None or dist.is_root  # rank 0 prints, evaluates and writes the plot

    x_train, y_train = mnist("train")
    x_test, y_test = mnist("test")
    if args.smoke:
        x_train, y_train, x_test, y_test = x_train[:1024], y_train[:1024], x_test[:500], y_test[:500]
    g, logits, loss = build(args.hidden, args.seed)
    if dist is not None:
        train = dg.distributed.compile(g, loss, dg.Adam(lr=args.lr), backend=args.backend)
    else:
        train = g.compile(loss=loss, optimizer=dg.Adam(lr=args.lr), backend=args.backend)
    predict = g.compile(outputs=logits, backend=args.backend)
    if args.resume:
        train.load(args.resume)
    rng = np.random.default_rng(args.seed)
    total_steps = args.epochs * batch_count(len(x_train), args.batch)
    step, losses, curve = 0, [], {"train loss": ([], []), "test accuracy": ([], [])}
    start = time.perf_counter()
    train_seconds, samples = 0.0, 0  # this rank's time in its training loop and samples it trained on
    for epoch in range(1, args.epochs + 1):
        epoch_losses = []
        batches = minibatches(len(x_train), args.batch, rng)
        total = batch_count(len(x_train), args.batch)
        bar = tqdm(batches, total=total, desc=f"epoch {epoch}", unit="batch", leave=False, disable=not root)
        epoch_start = time.perf_counter()
        for idx in bar:
            if dist is not None:
                idx = dist.split(idx)  # this rank's share of the global batch
            samples += len(idx)
            train.lr = linear_decay(args.lr, step, total_steps)
            step += 1
            epoch_losses.append(train(x=x_train[idx], y=y_train[idx]))
            track_loss(bar, curve["train loss"], step, epoch_losses)
        train_seconds += time.perf_counter() - epoch_start
        losses.append(float(np.mean(epoch_losses)) if dist is None else dist.average(np.mean(epoch_losses)))
        if not root:
            continue  # the other ranks go on and wait in the next step's allreduce
        acc = accuracy(predict, x_test, y_test)
        curve["test accuracy"][0].append(step)
        curve["test accuracy"][1].append(acc)
        print(f"epoch {epoch}: mean loss {losses[-1]:.4f}, test accuracy {acc:.4f}")
    seconds = time.perf_counter() - start
    if args.save:
        train.save(args.save)  # with --distributed: rank 0 writes, the other ranks wait for it
    if not root:
        return
    # rank 0's loop time: its steps wait for the slowest rank in each allreduce, never for evaluation
    ranks = 1 if dist is None else dist.size
    total = samples * ranks / train_seconds
    if args.plot:
        plot_curves(args.plot, curve, "step", "MNIST MLP")
    print(
        f"summary: test accuracy {accuracy(predict, x_test, y_test):.4f} after {args.epochs} epoch(s), "
        f"{seconds:.1f} s ({seconds / args.epochs:.1f} s/epoch), backend {train.backend}"
    )
    print(f"throughput: {total:,.0f} samples/s ({total / ranks:,.0f} per rank x {ranks} rank(s), training loop only)")


if __name__ == "__main__":
    main()
