"""The PyTorch twin of mnist_resnet.py's network: the same layers, initial parameters and batch-norm
statistics, minibatches, AdamW settings (no decay on biases and batch-norm scales), cosine schedule,
gradient clipping and thread count, so that seconds per epoch compare."""

from __future__ import annotations

import math

import numpy as np
from common import Clock, minibatches, shifted
from mnist_conv_torch import accuracy, summary


def conv_bn(torch, p: dict, h, name: str, stride: int, training: bool):
    F = torch.nn.functional
    w = p[f"{name}/conv/w"]
    h = F.conv2d(h, w, stride=stride, padding=w.shape[-1] // 2)
    bn = f"{name}/bn"
    return F.batch_norm(h, p[f"{bn}/running_mean"], p[f"{bn}/running_var"], p[f"{bn}/scale"], p[f"{bn}/bias"],
                        training=training, momentum=0.1, eps=1e-5)  # fmt: skip


def forward(torch, p: dict, x, args, training: bool):
    """mnist_resnet.build in PyTorch."""
    F = torch.nn.functional
    h = F.relu(conv_bn(torch, p, x, "stem", 1, training))
    h = F.max_pool2d(h, 3, stride=2, padding=1)
    for stage, filters in enumerate(args.widths, start=1):
        for index in range(args.blocks):
            stride = 2 if stage > 1 and index == 0 else 1
            name = f"stage{stage}/block{index + 1}"
            y = F.relu(conv_bn(torch, p, h, f"{name}/a", stride, training))
            y = conv_bn(torch, p, y, f"{name}/b", 1, training)
            shortcut = h if stride == 1 and h.shape[1] == filters else conv_bn(torch, p, h, f"{name}/proj", stride,
                                                                                 training)  # fmt: skip
            h = F.relu(y + shortcut)
    return torch.addmm(p["head/b"], h.mean(dim=(2, 3)), p["head/w"])


def cosine(peak: float, total: int, step: int) -> float:
    """dg.schedules.cosine_decay(peak, total) at `step`."""
    return 0.5 * peak * (1 + math.cos(math.pi * min(step, total) / total))


def train_torch(args, data, initial: dict[str, np.ndarray], threads: int) -> dict:
    """Train from drug's initial parameters and statistics; returns accuracy and training seconds."""
    import torch

    torch.set_num_threads(threads)
    x_train, y_train, x_test, y_test = (torch.from_numpy(a) for a in data)
    y_train = y_train.long()
    p = {name: torch.from_numpy(value.copy()) for name, value in initial.items()}
    params = {name: p[name].requires_grad_() for name in p if "/running_" not in name}
    decayed = [t for t in params.values() if t.ndim > 1]
    others = [t for t in params.values() if t.ndim <= 1]
    groups = [{"params": decayed, "weight_decay": args.weight_decay}, {"params": others, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=args.lr)
    rng, augment = np.random.default_rng(args.seed), np.random.default_rng(args.seed + 1)
    total_steps = max(args.epochs * -(-len(x_train) // args.batch), 1)
    step, clock = 0, Clock()
    for epoch in range(1, args.epochs + 1):
        losses = []
        with clock.epoch():
            for idx in minibatches(len(x_train), args.batch, rng):
                for group in opt.param_groups:
                    group["lr"] = cosine(args.lr, total_steps, step)
                step += 1
                x = torch.from_numpy(shifted(data[0][idx], augment, args.shift))
                logits = forward(torch, p, x, args, True)
                loss = torch.nn.functional.cross_entropy(logits, y_train[torch.from_numpy(idx)])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params.values(), args.clip)
                opt.step()
                losses.append(loss.item())
        acc = accuracy(torch, lambda x: forward(torch, p, x, args, False), x_test, y_test)
        print(f"torch epoch {epoch}: mean loss {np.mean(losses):.4f}, test accuracy {acc:.4f}, {clock.last:.1f} s")
    return {**summary(torch, lambda x: forward(torch, p, x, args, False), x_test, y_test, clock.seconds, threads),
            "cpu": clock.cpu}  # fmt: skip
