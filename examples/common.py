"""What every example shares: its command-line flags, minibatch order, a learning-rate schedule,
checkpoints and the optional plot of its curves."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import numpy as np


def example_parser(description: str, epochs: int, batch: int, lr: float) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--lr", type=float, default=lr, help="peak learning rate")
    parser.add_argument("--backend", choices=["numpy", "llvm"], default="llvm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="a few batches on a slice of the data, for tests")
    parser.add_argument("--save", metavar="PATH", help="write a checkpoint here at the end")
    parser.add_argument("--resume", metavar="PATH", help="start from this checkpoint")
    parser.add_argument("--plot", metavar="PNG", help="save the loss/metric curves to this PNG (needs matplotlib)")
    return parser


def batch_count(n: int, batch: int) -> int:
    """Minibatches in an epoch of `n` samples (the last one may be smaller): the progress bars' total."""
    return -(-n // batch)


def minibatches(n: int, batch: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Indices of a shuffled epoch, `batch` at a time (the last batch may be smaller)."""
    order = rng.permutation(n)
    for i in range(0, n, batch):
        yield order[i : i + batch]


def linear_decay(peak: float, step: int, total: int) -> float:
    """The learning rate of `step` out of `total`, decayed linearly from `peak` to zero."""
    return peak * max(0.0, 1.0 - step / max(total, 1))


def track_loss(bar, curve: tuple[list, list], step: int, losses: list[float], every: int = 20) -> None:
    """Every `every` steps: the mean of the last `every` losses on the progress bar and on the curve."""
    if step % every == 0:
        recent = float(np.mean(losses[-every:]))
        bar.set_postfix(loss=f"{recent:.4f}")
        curve[0].append(step)
        curve[1].append(recent)


def accuracy(predict, x: np.ndarray, y: np.ndarray, batch: int = 1000) -> float:
    """Share of the rows of x whose arg-max prediction is the label, `batch` rows per call."""
    correct = sum(
        int((predict(x=x[i : i + batch]).argmax(1) == y[i : i + batch]).sum()) for i in range(0, len(x), batch)
    )
    return correct / len(x)


def plot_curves(path: str, curves: dict[str, tuple[list[float], list[float]]], xlabel: str, title: str) -> None:
    """One panel per curve (name -> (x values, y values)), written as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise SystemExit(f"--plot needs matplotlib ({error}); install it with `pip install matplotlib`") from None
    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.5), squeeze=False)
    for ax, (name, (xs, ys)) in zip(axes[0], curves.items()):
        ax.plot(xs, ys)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"plot: {path}")
