"""The PyTorch twin of ptb_char_transformer.py's model: the same layers (PyTorch's own layer norm,
scaled_dot_product_attention, exact GELU, dropout), initial parameters, batches, Adam settings,
learning-rate schedule, evaluation and thread count, so that seconds per epoch compare."""

from __future__ import annotations

import importlib.util
import time

import numpy as np
from ptb_char_transformer import Run, batches, bits_per_char, eval_steps, schedule, steps_per_epoch, total_steps

from drug.layers import sinusoidal_positions


def torch_missing() -> str | None:
    """Why PyTorch cannot be used, or None. Does not import it (its OpenMP pool starts on import)."""
    return None if importlib.util.find_spec("torch") else "the torch package is not installed"


def forward(torch, p: dict, ids, args, training: bool):
    """ptb_char_transformer.build in PyTorch, parameters by drug's names."""
    F = torch.nn.functional
    batch, seq = ids.shape
    d, heads = args.dim, args.heads

    def dropout(x):
        return F.dropout(x, args.dropout, training) if args.dropout else x

    def norm(x, name):
        return F.layer_norm(x, (d,), p[f"{name}/scale"], p[f"{name}/bias"])

    def dense(x, name):
        return torch.addmm(p[f"{name}/b"], x.reshape(-1, x.shape[-1]), p[f"{name}/w"]).view(*x.shape[:-1], -1)

    positions = (
        p["pos/table"] if "pos/table" in p else torch.from_numpy(sinusoidal_positions(seq, d).astype(np.float32))
    )
    x = dropout(F.embedding(ids, p["embed/table"]) + positions)
    for i in range(1, args.layers + 1):
        b = f"block{i}"
        h = norm(x, f"{b}/ln1")

        q, k, v = (
            torch.addmm(p[f"{b}/attn/b_{role}"], h.reshape(-1, d), p[f"{b}/attn/w_{role}"])
            .view(batch, seq, heads, d // heads)
            .transpose(1, 2)
            for role in "qkv"
        )
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        a = torch.addmm(p[f"{b}/attn/b_o"], a.transpose(1, 2).reshape(-1, d), p[f"{b}/attn/w_o"]).view(batch, seq, d)
        x = x + dropout(a)
        x = x + dropout(dense(F.gelu(dense(norm(x, f"{b}/ln2"), f"{b}/fc1")), f"{b}/fc2"))
    return dense(norm(x, "ln_f"), "head")


def train_torch(args, splits: dict, initial: dict[str, np.ndarray], vocab: int) -> Run:
    """Train from drug's initial parameters on the same batches; returns the run's measurements."""
    import torch

    torch.set_num_threads(args.threads)
    p = {name: torch.nn.Parameter(torch.from_numpy(value.copy())) for name, value in initial.items()}
    opt = torch.optim.Adam(p.values(), lr=args.lr)
    run = Run(steps_per_epoch(splits["train"], args))
    total = total_steps(splits["train"], args)

    def evaluate(ids):
        with torch.no_grad():
            return forward(torch, p, torch.from_numpy(ids), args, training=False).numpy()

    for step, (inputs, targets) in enumerate(batches(splits["train"], args, total, np.random.default_rng(args.seed))):
        t0 = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = schedule(args, step, total)
        logits = forward(torch, p, torch.from_numpy(inputs), args, training=True)
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, vocab), torch.from_numpy(targets).long().reshape(-1)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        run.record(loss.item(), time.perf_counter() - t0)
        if run.steps in eval_steps(total, args):
            run.validated(bits_per_char(evaluate, splits["valid"], args.seq))
            print(f"torch step {run.steps}: valid {run.valid_bpc:.4f} bits/char, {run.seconds:.0f} s in train steps")
    print(f"torch summary: valid {run.valid_bpc:.4f} bits/char, {run.seconds_per_epoch:.1f} s/epoch, "
          f"torch {torch.__version__}, {args.threads} thread(s)")  # fmt: skip
    return run
