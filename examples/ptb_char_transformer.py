"""Train a small decoder-only transformer (causal attention, pre-norm blocks, GELU MLPs, dropout)
on Penn Treebank characters, report bits per character and sample text from it; `--torch` then
trains the identical model with PyTorch (same initial parameters, batches, Adam and learning-rate
schedule, same threads) and prints both side by side."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
from common import example_parser, linear_decay, plot_curves
from tqdm import tqdm

import drug as dg
from drug.datasets import CharVocab, ptb_chars, ptb_vocab
from drug.decoding import log_softmax, sample

# --smoke: a tiny model on a slice of the data, so a run takes seconds (explicit flags still win)
SMOKE = {"dim": 32, "layers": 1, "heads": 2, "seq": 32, "batch": 8, "steps_per_epoch": 20, "warmup": 10, "generate": 40}
SMOKE_CHARS = {"train": 20_000, "valid": 3_000, "test": 3_000}


@dataclass
class Model:
    graph: dg.Graph
    loss: dg.Node  # mean cross-entropy of a (batch, seq) window of next characters
    logits: dg.Node  # (batch, seq, vocab) from the same ids, for evaluation and sampling


def build(vocab: int, args) -> Model:
    """Embedding + learned positions, `layers` pre-norm transformer blocks (causal), a final
    layer norm and a linear head; dropout after the embedding and inside every block."""
    g = dg.Graph(seed=args.seed)
    ids = g.input("ids", (None, args.seq), dtype="int32")
    x = dg.layers.Embedding(vocab, args.dim, init="normal", name="embed")(ids)
    x = dg.layers.PositionalEmbedding(args.seq, kind=args.positions, name="pos")(x)
    x = dg.layers.Dropout(args.dropout, name="drop")(x)
    for i in range(1, args.layers + 1):
        block = dg.layers.TransformerBlock(args.heads, dropout=args.dropout, causal=True, name=f"block{i}")
        x = block(x)
    logits = dg.layers.Dense(vocab, name="head")(dg.layers.LayerNorm(name="ln_f")(x))
    loss = dg.softmax_cross_entropy(logits, g.input("targets", (None, args.seq), dtype="int32"))
    return Model(g, loss, logits)


def windows(data: np.ndarray, starts: np.ndarray, seq: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and next-character targets of the windows starting at `starts`: (len(starts), seq) each."""
    index = starts[:, None] + np.arange(seq + 1)[None, :]
    chunk = data[index]
    return np.ascontiguousarray(chunk[:, :-1]), np.ascontiguousarray(chunk[:, 1:])


def batches(data: np.ndarray, args, steps: int, rng: np.random.Generator):
    """`steps` batches of `--batch` windows at random offsets (the same for drug and the twin)."""
    for _ in range(steps):
        yield windows(data, rng.integers(0, len(data) - args.seq - 1, size=args.batch), args.seq)


def bits_per_char(evaluate, data: np.ndarray, seq: int, batch: int = 64) -> float:
    """Cross-entropy in bits of every character of `data` after the first, each predicted from at
    least seq/2 characters before it (when there are that many): windows of `seq` characters
    every seq/2, each scoring its second half (the first window scores all of it)."""
    stride = seq // 2
    starts = np.arange(0, len(data) - seq - 1, stride)
    nats, count = 0.0, 0
    for i in range(0, len(starts), batch):
        chunk = starts[i : i + batch]
        inputs, targets = windows(data, chunk, seq)
        log_probs = log_softmax(evaluate(inputs).astype(np.float64))
        picked = np.take_along_axis(log_probs, targets[..., None].astype(np.int64), axis=-1)[..., 0]
        scored = np.where(chunk[:, None] == 0, True, np.arange(seq)[None, :] >= seq - stride)
        nats -= float(picked[scored].sum())
        count += int(scored.sum())
    return nats / max(count, 1) / math.log(2)


def one_step(evaluate, seq: int):
    """drug.decoding's step: the state is each hypothesis' text so far; the model reads its last
    `seq` characters (right-padded: the causal mask keeps padding out of the prediction)."""

    def step(tokens: np.ndarray, texts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        texts = np.concatenate([texts, tokens[:, None].astype(np.int32)], axis=1)
        context = texts[:, -seq:]
        window = np.zeros((len(texts), seq), np.int32)
        window[:, : context.shape[1]] = context
        logits = evaluate(window)[:, context.shape[1] - 1]
        return log_softmax(logits.astype(np.float64)), texts

    return step


def generate(evaluate, vocab: CharVocab, args, rng: np.random.Generator) -> None:
    context = np.array([[vocab.eos, *vocab.encode(args.prompt).tolist()]], np.int32)
    step = one_step(evaluate, args.seq)
    hyp = sample(step, context[:, :-1], int(context[0, -1]), args.generate, args.temperature, rng=rng)[0]
    bits = -hyp.score / math.log(2) / max(len(hyp.tokens), 1)
    print(f"generated (sampled, temperature {args.temperature}, {bits:.2f} bits/char):")
    print((args.prompt + vocab.decode(hyp.tokens)).rstrip("\n"))


@dataclass
class Run:
    """What a training run measured (drug's or the twin's)."""

    steps_per_epoch: int
    losses: list[float] = field(default_factory=list)
    curves: dict[str, tuple[list[float], list[float]]] = field(
        default_factory=lambda: {"train loss (nats)": ([], []), "valid bits/char": ([], [])}
    )
    seconds: float = 0.0  # in train steps only
    steps: int = 0
    valid_bpc: float = float("nan")

    @property
    def seconds_per_epoch(self) -> float:
        return self.seconds / max(self.steps, 1) * self.steps_per_epoch

    def record(self, loss: float, seconds: float) -> None:
        if not math.isfinite(loss):
            raise SystemExit(f"the loss became {loss} at step {self.steps}: lower --lr")
        self.losses.append(loss)
        self.seconds += seconds
        self.steps += 1
        if self.steps % 50 == 0:
            self.curves["train loss (nats)"][0].append(self.steps)
            self.curves["train loss (nats)"][1].append(float(np.mean(self.losses[-50:])))

    def validated(self, bpc: float) -> None:
        self.valid_bpc = bpc
        self.curves["valid bits/char"][0].append(self.steps)
        self.curves["valid bits/char"][1].append(bpc)


def schedule(args, step: int, total: int) -> float:
    """Linear warm-up over --warmup steps, then linear decay to zero at the last step."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    return linear_decay(args.lr, step - args.warmup, total - args.warmup)


def steps_per_epoch(data: np.ndarray, args) -> int:
    return args.steps_per_epoch or max(1, len(data) // (args.batch * args.seq))


def total_steps(data: np.ndarray, args) -> int:
    return args.epochs * steps_per_epoch(data, args)


def eval_steps(total: int, args) -> set[int]:
    """The steps after which the validation split is scored (--evals of them, the last one last)."""
    return {round(total * j / args.evals) for j in range(1, args.evals + 1)}


def train_drug(model: Model, splits: dict, args) -> tuple[Run, object]:
    train = model.graph.compile(loss=model.loss, optimizer=dg.Adam(lr=args.lr), backend=args.backend)
    predict = model.graph.compile(outputs=model.logits, backend=args.backend)  # inference: no dropout

    def evaluate(ids: np.ndarray) -> np.ndarray:
        return predict(ids=ids)

    if args.resume:
        train.load(args.resume)
        print(f"resumed from {args.resume} (step {train.step_count})")
    run = Run(steps_per_epoch(splits["train"], args))
    total = total_steps(splits["train"], args)
    bar = tqdm(batches(splits["train"], args, total, np.random.default_rng(args.seed)), total=total, leave=False)
    for step, (inputs, targets) in enumerate(bar):
        t0 = time.perf_counter()
        train.lr = schedule(args, step, total)
        run.record(train(ids=inputs, targets=targets), time.perf_counter() - t0)
        if run.steps % 50 == 0:
            bar.set_postfix(loss=f"{run.curves['train loss (nats)'][1][-1]:.3f}")
        if run.steps in eval_steps(total, args):
            run.validated(bits_per_char(evaluate, splits["valid"], args.seq))
            tqdm.write(f"step {run.steps}: valid {run.valid_bpc:.4f} bits/char, {run.seconds:.0f} s in train steps")
    bar.close()
    if args.save:
        train.save(args.save)
    return run, evaluate


def parse_args():
    parser = example_parser(__doc__, epochs=3, batch=32, lr=4e-3)
    parser.add_argument("--dim", type=int, default=128, help="model width")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128, help="context length (characters)")
    parser.add_argument("--dropout", type=float, default=0.0, help="dropout rate (3 epochs do not overfit)")
    parser.add_argument("--positions", choices=["learned", "sinusoidal"], default="learned")
    parser.add_argument("--warmup", type=int, default=200, help="steps of linear learning-rate warm-up")
    parser.add_argument("--steps-per-epoch", type=int, default=0, help="default: the training characters / batch / seq")
    parser.add_argument("--evals", type=int, default=2, help="validation passes over the run")
    parser.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (0: greedy)")
    parser.add_argument("--generate", type=int, default=200, metavar="N", help="characters to generate")
    parser.add_argument("--prompt", default="the ", help="text the generated characters continue")
    parser.add_argument("--threads", type=int, default=2, help="threads of drug's steps and of the twin (DRUG_THREADS)")
    parser.add_argument("--torch", action="store_true", help="then train the same model with PyTorch")
    known, _ = parser.parse_known_args()
    if known.smoke:
        parser.set_defaults(**SMOKE)
    args = parser.parse_args()
    if args.dim % args.heads:
        parser.error(f"--dim {args.dim} must be a multiple of --heads {args.heads}")
    if args.torch and args.resume:
        parser.error("--torch compares runs from the same initial parameters; drop --resume")
    return args


def main() -> None:
    args = parse_args()
    os.environ["DRUG_THREADS"] = str(args.threads)  # drug's thread pool, read when it first compiles
    if args.torch:
        from ptb_char_transformer_torch import torch_missing

        if torch_missing():
            raise SystemExit(f"--torch needs PyTorch: {torch_missing()}; install it with `pip install -e .[bench]`")
    vocab = ptb_vocab()
    splits = {split: ptb_chars(split) for split in ("train", "valid", "test")}
    if args.smoke:
        splits = {split: data[: SMOKE_CHARS[split]] for split, data in splits.items()}
    start = time.perf_counter()
    model = build(len(vocab), args)
    initial = {name: np.array(value) for name, value in model.graph.params.items()}
    print(
        f"model: {args.layers} blocks, width {args.dim}, {args.heads} heads, context {args.seq}, "
        f"{sum(v.size for v in initial.values()):,} parameters; {total_steps(splits['train'], args)} steps of "
        f"{args.batch} x {args.seq} characters"
    )
    run, evaluate = train_drug(model, splits, args)
    test_bpc = bits_per_char(evaluate, splits["test"], args.seq)
    if args.plot:
        plot_curves(args.plot, run.curves, "step", f"Penn Treebank characters, transformer {args.layers}x{args.dim}")
    generate(evaluate, vocab, args, np.random.default_rng(args.seed))
    print(
        f"summary: valid {run.valid_bpc:.4f} bits/char, test {test_bpc:.4f} bits/char, "
        f"{run.seconds_per_epoch:.1f} s/epoch ({run.seconds:.0f} s in {run.steps} train steps, "
        f"{time.perf_counter() - start:.0f} s in all), backend {args.backend}, {args.threads} thread(s)"
    )
    if args.torch:
        from ptb_char_transformer_torch import train_torch  # imports torch only now: its threads would slow drug's

        twin = train_torch(args, splits, initial, len(vocab))
        print(f"{'':8}{'valid bits/char':>16}{'s/epoch':>10}")
        for name, r in (("drug", run), ("torch", twin)):
            print(f"{name:8}{r.valid_bpc:>16.4f}{r.seconds_per_epoch:>10.1f}")
        print(f"drug is {twin.seconds_per_epoch / max(run.seconds_per_epoch, 1e-9):.2f}x faster per epoch")


if __name__ == "__main__":
    main()
