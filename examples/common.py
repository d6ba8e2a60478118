"""What every example shares: its command-line flags, minibatch order, a learning-rate schedule,
checkpoints and the optional plot of its curves."""

from __future__ import annotations

import argparse
import importlib.util
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

import drug as dg

# drug's layers start their parameters as PyTorch's layers do; the README's figures for the dense, conv,
# GAN and PTB examples were measured with Glorot-uniform weights and zero biases, which they keep.
GLOROT = {"init": "xavier", "bias_init": "zeros"}


def example_parser(description: str, epochs: int, batch: int, lr: float) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--lr", type=float, default=lr, help="peak learning rate")
    parser.add_argument(
        "--backend",
        default="llvm",
        type=backend_name,
        help="numpy, llvm (default) or opencl; opencl:<device> picks an OpenCL device (python -m drug.backends.opencl)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="a few batches on a slice of the data, for tests")
    parser.add_argument("--save", metavar="PATH", help="write a checkpoint here at the end")
    parser.add_argument("--resume", metavar="PATH", help="start from this checkpoint")
    parser.add_argument("--plot", metavar="PNG", help="save the loss/metric curves to this PNG (needs matplotlib)")
    return parser


def torch_missing() -> str | None:
    """Why PyTorch cannot be used, or None. Does not import it (its OpenMP pool starts on import)."""
    return None if importlib.util.find_spec("torch") else "the torch package is not installed"


def refuse_twin_without_torch(args, *exclusive: str) -> None:
    """Before any training: `--torch` needs PyTorch, and whole runs from the same initial parameters
    (so none of the flags in `exclusive`, e.g. resume)."""
    if not args.torch:
        return
    if torch_missing():  # no point in half a comparison
        raise SystemExit(f"--torch needs PyTorch: {torch_missing()}; install it with `pip install -e .[bench]`")
    given = [f"--{flag.replace('_', '-')}" for flag in exclusive if getattr(args, flag)]
    if given:
        raise SystemExit(f"--torch compares whole runs from the same initial parameters; drop {', '.join(given)}")


def mnist_images(smoke: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNIST as NCHW images and labels (train, then test); with `smoke` a slice of each."""
    from drug.datasets import mnist

    x_train, y_train = mnist("train", flatten=False)
    x_test, y_test = mnist("test", flatten=False)
    if smoke:
        return x_train[:1024], y_train[:1024], x_test[:500], y_test[:500]
    return x_train, y_train, x_test, y_test


class Clock:
    """Training time summed over epochs: wall-clock seconds, and the CPU seconds of this process
    (all its threads), which other processes on a shared machine disturb less."""

    def __init__(self) -> None:
        self.seconds = self.cpu = self.last = 0.0

    @contextmanager
    def epoch(self) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        self.last = time.perf_counter() - wall
        self.seconds += self.last
        self.cpu += time.process_time() - cpu


def run_with_twin(args, train_drug, twin_module: str, *exclusive: str) -> None:
    """Train with drug on MNIST images, then (`--torch`) the PyTorch twin in `twin_module` with the
    same threads, and report both. torch is imported only after drug trained: its thread pool
    would slow drug's."""
    from drug.backends.llvm.threads import thread_count

    refuse_twin_without_torch(args, *exclusive)
    data = mnist_images(args.smoke)
    threads = thread_count()
    result = train_drug(args, data)
    twin = (
        importlib.import_module(twin_module).train_torch(args, data, result["initial"], threads) if args.torch else None
    )
    report(result, result.get("epochs", args.epochs), threads, twin)


def report(result: dict, epochs: int, threads: int, twin: dict | None = None) -> None:
    """The summary line of a drug run, then (with a twin's result) both side by side."""
    seconds = result["seconds"]
    per_epoch = f"{seconds / epochs:.1f} s/epoch" if epochs else "no training"
    print(
        f"summary: test accuracy {result['accuracy']:.4f} after {epochs} epoch(s), {seconds:.1f} s ({per_epoch}), "
        f"backend {result['backend']}, {threads} thread(s)"
    )
    if twin is None:
        return
    cpu = "cpu" in result and "cpu" in twin
    print(f"{'':8}{'test accuracy':>15}{'s/epoch':>10}" + (f"{'cpu s/epoch':>13}" if cpu else ""))
    for name, r in (("drug", result), ("torch", twin)):
        line = f"{name:8}{r['accuracy']:>15.4f}{r['seconds'] / max(epochs, 1):>10.1f}"
        print(line + (f"{r['cpu'] / max(epochs, 1):>13.1f}" if cpu else ""))
    if epochs:
        ratio = f"drug is {twin['seconds'] / max(seconds, 1e-9):.2f}x as fast per epoch"
        print(ratio + (f" ({twin['cpu'] / max(result['cpu'], 1e-9):.2f}x in CPU time)" if cpu else ""))


def backend_name(text: str) -> str:
    """A registered backend, with an option after a colon if it takes one ("opencl:1")."""
    if text.partition(":")[0] not in dg.backends.available():
        raise argparse.ArgumentTypeError(f"unknown backend {text!r}; choose one of {dg.backends.available()}")
    return text


def batch_count(n: int, batch: int) -> int:
    """Minibatches in an epoch of `n` samples (the last one may be smaller): the progress bars' total."""
    return -(-n // batch)


def minibatches(n: int, batch: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Indices of a shuffled epoch, `batch` at a time (the last batch may be smaller)."""
    order = rng.permutation(n)
    for i in range(0, n, batch):
        yield order[i : i + batch]


def shifted(images: np.ndarray, rng: np.random.Generator, max_shift: int) -> np.ndarray:
    """Each NCHW image moved by its own random offset of up to `max_shift` pixels along each axis,
    with zeros coming in at the edges (data augmentation: translations)."""
    if max_shift <= 0:
        return images
    n, _, h, w = images.shape
    padded = np.pad(images, ((0, 0), (0, 0), (max_shift, max_shift), (max_shift, max_shift)))
    dy, dx = rng.integers(0, 2 * max_shift + 1, size=(2, n))
    rows = dy[:, None] + np.arange(h)[None, :]  # (n, h)
    cols = dx[:, None] + np.arange(w)[None, :]  # (n, w)
    return padded[np.arange(n)[:, None, None, None], np.arange(images.shape[1])[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]  # fmt: skip


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


def end_of_epoch(epoch: int, losses: list[float], seconds: float, step: int, curve: tuple[list, list], predict,
                 x_test: np.ndarray, y_test: np.ndarray) -> None:  # fmt: skip
    """The test accuracy after an epoch: on the curve and in the epoch's line."""
    acc = accuracy(predict, x_test, y_test)
    curve[0].append(step)
    curve[1].append(acc)
    print(f"epoch {epoch}: mean loss {np.mean(losses):.4f}, test accuracy {acc:.4f}, {seconds:.1f} s")


def finish(args, train, curves: dict, title: str, predict, x_test: np.ndarray, y_test: np.ndarray) -> float:
    """After training: the checkpoint and the plot the flags ask for; returns the test accuracy."""
    if args.save:
        train.save(args.save)
    if args.plot:
        plot_curves(args.plot, curves, "step", title)
    return accuracy(predict, x_test, y_test)


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
