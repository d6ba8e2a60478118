"""The PyTorch twin of mnist_conv.py's network: the same layers, initial parameters, minibatches,
Adam settings, learning-rate schedule and thread count, so that seconds per epoch compare."""

from __future__ import annotations

import importlib.util
import time

import numpy as np
from common import batch_count, linear_decay, minibatches


def torch_missing() -> str | None:
    """Why PyTorch cannot be used, or None. Does not import it (its OpenMP pool starts on import)."""
    return None if importlib.util.find_spec("torch") else "the torch package is not installed"


def forward(torch, p: dict, x, args):
    """mnist_conv.build in PyTorch: conv3x3 same + bias + relu, 2x2 pool between blocks, global pool
    (amax shares the gradient among ties, like drug's max), dense."""
    F = torch.nn.functional
    pool_fn = F.max_pool2d if args.pool == "max" else F.avg_pool2d
    n_blocks = len(args.widths)
    h = x
    for i in range(1, n_blocks + 1):
        h = F.relu(F.conv2d(h, p[f"conv{i}/w"], p[f"conv{i}/b"], padding="same"))
        if i < n_blocks:
            h = pool_fn(h, 2)
    features = h.amax(dim=(2, 3)) if args.head == "max" else h.mean(dim=(2, 3))
    return torch.addmm(p["out/b"], features, p["out/w"])


def train_torch(args, data, initial: dict[str, np.ndarray], threads: int) -> dict:
    """Train from drug's initial parameters; returns accuracy and training seconds."""
    import torch

    torch.set_num_threads(threads)
    x_train, y_train, x_test, y_test = (torch.from_numpy(a) for a in data)
    y_train = y_train.long()
    p = {name: torch.nn.Parameter(torch.from_numpy(value.copy())) for name, value in initial.items()}
    opt = torch.optim.Adam(p.values(), lr=args.lr)
    rng = np.random.default_rng(args.seed)
    total_steps = args.epochs * batch_count(len(x_train), args.batch)
    step, seconds = 0, 0.0
    for epoch in range(1, args.epochs + 1):
        losses = []
        start = time.perf_counter()
        for idx in minibatches(len(x_train), args.batch, rng):
            for group in opt.param_groups:
                group["lr"] = linear_decay(args.lr, step, total_steps)
            step += 1
            idx = torch.from_numpy(idx)
            loss = torch.nn.functional.cross_entropy(forward(torch, p, x_train[idx], args), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        elapsed = time.perf_counter() - start
        seconds += elapsed
        acc = accuracy(torch, p, x_test, y_test, args)
        print(f"torch epoch {epoch}: mean loss {np.mean(losses):.4f}, test accuracy {acc:.4f}, {elapsed:.1f} s")
    acc = accuracy(torch, p, x_test, y_test, args)
    print(f"torch summary: test accuracy {acc:.4f}, {seconds:.1f} s, torch {torch.__version__}, {threads} thread(s)")
    return {"accuracy": acc, "seconds": seconds}


def accuracy(torch, p: dict, x, y, args, batch: int = 1000) -> float:
    with torch.no_grad():
        correct = sum(
            int((forward(torch, p, x[i : i + batch], args).argmax(1) == y[i : i + batch]).sum())
            for i in range(0, len(x), batch)
        )
    return correct / len(x)
