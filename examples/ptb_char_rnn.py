"""Train a character-level language model (GRU or Elman RNN) on Penn Treebank with truncated
backpropagation through time, report bits per character and generate text with beam search and
sampling."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
from common import GLOROT, example_parser, linear_decay, plot_curves
from threadpoolctl import threadpool_limits
from tqdm import tqdm

import drug as dg
from drug.datasets import CharVocab, ptb_chars, ptb_vocab
from drug.decoding import beam_search, log_softmax, sample

CELLS = {"rnn": dg.layers.RNNCell, "gru": dg.layers.GRUCell}
# --smoke: a tiny model on a slice of the data, so a run takes seconds (explicit flags still win)
SMOKE = {"hidden": 48, "embed": 16, "seq": 8, "eval_seq": 8, "batch": 8, "generate": 60, "epochs": 1}
SMOKE_CHARS = {"train": 12_000, "valid": 2_000, "test": 2_000}


@dataclass
class Model:
    """The three functions of one graph; the cell, embedding and head layers (so the parameters)
    are shared, and the train step's updates are seen by the other two."""

    graph: dg.Graph
    loss: dg.Node  # mean cross-entropy of a (batch, seq) window
    last: dg.Node  # the state after the window, fed back as h0 for the next one
    eval_logits: dg.Node  # (batch, eval_seq, vocab) from eval_ids and eval_h0
    eval_last: dg.Node
    step_logits: dg.Node  # one step: (k, vocab) from tok (k,) and h (k, hidden)
    step_state: dg.Node


def build(
    cell_kind: str, vocab: int, hidden: int, embed: int, seq: int, eval_seq: int, seed: int, scan: bool = False
) -> Model:
    g = dg.Graph(seed=seed)
    embedding = dg.layers.Embedding(vocab, embed, init="xavier", name="embed")
    cell = CELLS[cell_kind](hidden, name=cell_kind, **GLOROT)
    head = dg.layers.Dense(vocab, name="head", **GLOROT)

    def unroll(prefix: str, length: int) -> tuple[dg.Node, dg.Node]:
        ids = g.input(f"{prefix}ids", (None, length), dtype="int32")
        h0 = g.input(f"{prefix}h0", (None, hidden))
        states, last = cell.sequence(embedding(ids), h0, scan=scan)
        return head(states), last

    logits, last = unroll("", seq)
    loss = dg.softmax_cross_entropy(logits, g.input("targets", (None, seq), dtype="int32"))
    eval_logits, eval_last = unroll("eval_", eval_seq)
    h = cell(embedding(g.input("tok", (None,), dtype="int32")), g.input("h", (None, hidden)))
    return Model(g, loss, last, eval_logits, eval_last, head(h), h)


def train_streams(data: np.ndarray, batch: int, seq: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and next-character targets as `batch` parallel streams (batch, windows * seq),
    starting at `offset`: window w of every stream continues window w - 1 of the same stream."""
    length = (len(data) - 1 - offset) // batch // seq * seq
    if length == 0:
        raise SystemExit(f"{len(data)} characters are too few for --batch {batch} streams of --seq {seq}")
    cut = data[offset : offset + batch * length + 1]
    return cut[:-1].reshape(batch, length), cut[1:].reshape(batch, length)


def bits_per_char(evaluate, data: np.ndarray, eos: int, hidden: int, window: int, streams: int = 32) -> float:
    """Mean cross-entropy in bits over every character of `data`, each predicted from all the
    text before it (the first from an end of sentence). The text is cut into `streams` parallel
    pieces, each starting from the zero state; padding at the end is masked out."""
    n = len(data)
    length = math.ceil(math.ceil(n / streams) / window) * window
    pad = streams * length - n
    inputs = np.concatenate([[eos], data[:-1], np.full(pad, eos)]).astype(np.int32).reshape(streams, length)
    targets = np.concatenate([data, np.full(pad, eos)]).astype(np.int64).reshape(streams, length)
    real = (np.arange(streams * length) < n).reshape(streams, length)
    h = np.zeros((streams, hidden), np.float32)
    nats = 0.0
    for w in range(0, length, window):
        logits, h = evaluate(eval_ids=inputs[:, w : w + window], eval_h0=h)
        log_probs = log_softmax(logits.astype(np.float64))
        picked = np.take_along_axis(log_probs, targets[:, w : w + window, None], axis=-1)[..., 0]
        nats -= float(picked[real[:, w : w + window]].sum())
    return nats / n / math.log(2)


def one_step(predict):
    """The decoding step of drug.decoding: a batch of last tokens and states -> log-probabilities."""

    def step(tokens: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, h = predict(tok=tokens.astype(np.int32), h=h)
        return log_softmax(logits.astype(np.float64)), h

    return step


def generate(predict, vocab: CharVocab, hidden: int, args, rng: np.random.Generator) -> None:
    """Continue --prompt (after an end of sentence) with beam search and with sampling."""
    step = one_step(predict)
    context = [vocab.eos, *vocab.encode(args.prompt).tolist()]
    h = np.zeros((1, hidden), np.float32)
    for token in context[:-1]:  # the state before the last context token, which starts decoding
        _, h = step(np.array([token]), h)
    for title, hyp in (
        (f"beam search, width {args.beam}", beam_search(step, h, context[-1], args.beam, args.generate)[0]),
        (
            f"sampled, temperature {args.temperature}",
            sample(step, h, context[-1], args.generate, args.temperature, rng=rng)[0],
        ),
    ):
        bits = -hyp.score / math.log(2) / max(len(hyp.tokens), 1)
        print(f"generated ({title}, {bits:.2f} bits/char):")
        print((args.prompt + vocab.decode(hyp.tokens)).rstrip("\n"))


class Schedule:
    """Linear decay of the learning rate to zero over `total` steps or, if given, over a
    wall-clock budget of `seconds`, whichever ends first; `None` means stop."""

    def __init__(self, peak: float, total: int, seconds: float | None):
        self.peak, self.total, self.seconds = peak, total, seconds

    def __call__(self, step: int, elapsed: float) -> float | None:
        if step >= self.total or (self.seconds is not None and elapsed >= self.seconds):
            return None
        lr = linear_decay(self.peak, step, self.total)
        return lr if self.seconds is None else min(lr, self.peak * (1.0 - elapsed / self.seconds))


@dataclass
class Progress:
    """What the training loop measured: curves for the plot, throughput, the last valid bpc."""

    losses: list[float] = field(default_factory=list)
    curves: dict[str, tuple[list[float], list[float]]] = field(
        default_factory=lambda: {"train loss (nats)": ([], []), "valid bits/char": ([], [])}
    )
    tokens: int = 0
    seconds: float = 0.0  # in train steps only: evaluation excluded
    valid_bpc: float = float("nan")


def train_loop(train, valid_bpc, data: np.ndarray, args, rng: np.random.Generator) -> Progress:
    """Truncated BPTT over `--batch` streams: each window's last state is the next one's h0.
    Validation runs --evals-per-epoch times per epoch (and when training stops early)."""
    windows = train_streams(data, args.batch, args.seq, 0)[0].shape[1] // args.seq
    schedule = Schedule(args.lr, args.epochs * windows, None if args.minutes is None else 60.0 * args.minutes)
    marks = {round(windows * j / args.evals_per_epoch) for j in range(1, args.evals_per_epoch + 1)}
    p, step = Progress(), 0
    for epoch in range(1, args.epochs + 1):
        inputs, targets = train_streams(data, args.batch, args.seq, int(rng.integers(args.seq)))
        h = np.zeros((args.batch, args.hidden), np.float32)
        first = len(p.losses)
        bar = tqdm(range(windows), desc=f"epoch {epoch}", unit="window", leave=False)
        for w in bar:
            lr = schedule(step, p.seconds)
            if lr is None:
                break
            t0 = time.perf_counter()
            train.lr = lr
            cut = slice(w * args.seq, (w + 1) * args.seq)
            loss, h = train(ids=inputs[:, cut], targets=targets[:, cut], h0=h)
            p.seconds += time.perf_counter() - t0
            if not math.isfinite(loss):
                raise SystemExit(f"the loss became {loss} at step {step}: lower --lr")
            p.losses.append(loss)
            p.tokens += inputs[:, cut].size
            step += 1
            if step % 50 == 0:
                recent = float(np.mean(p.losses[-50:]))
                bar.set_postfix(loss=f"{recent:.3f}", bpc=f"{recent / math.log(2):.3f}")
                p.curves["train loss (nats)"][0].append(step)
                p.curves["train loss (nats)"][1].append(recent)
            if w + 1 in marks:
                _validate(p, valid_bpc, step)
        bar.close()
        stopped = schedule(step, p.seconds) is None and step < schedule.total
        if stopped and not p.curves["valid bits/char"][0][-1:] == [step]:
            _validate(p, valid_bpc, step)
        print(
            f"epoch {epoch}: train loss {np.mean(p.losses[first:]):.4f} nats, valid {p.valid_bpc:.4f} bits/char, "
            f"{p.seconds:.0f} s in train steps"
        )
        if stopped:
            print(f"stopped at step {step} of {schedule.total}: --minutes {args.minutes} used up")
            break
    return p


def _validate(p: Progress, valid_bpc, step: int) -> None:
    p.valid_bpc = valid_bpc()
    p.curves["valid bits/char"][0].append(step)
    p.curves["valid bits/char"][1].append(p.valid_bpc)
    tqdm.write(f"step {step}: valid {p.valid_bpc:.4f} bits/char")


def parse_args():
    parser = example_parser(__doc__, epochs=2, batch=64, lr=3e-3)
    parser.add_argument("--cell", choices=sorted(CELLS), default="gru")
    parser.add_argument("--hidden", type=int, default=192)
    parser.add_argument("--embed", type=int, default=48)
    parser.add_argument("--seq", type=int, default=32, help="truncated BPTT length (the train step unrolls this far)")
    parser.add_argument("--scan", action="store_true", help="compile the time loop as one native loop (dg.scan)")
    parser.add_argument("--eval-seq", type=int, default=64, help="window of the validation/test evaluator")
    parser.add_argument("--evals-per-epoch", type=int, default=2, help="full validation passes per epoch")
    parser.add_argument("--beam", type=int, default=5, help="beam width for the generated text")
    parser.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (0: greedy)")
    parser.add_argument("--generate", type=int, default=200, metavar="N", help="characters to generate")
    parser.add_argument("--prompt", default="the ", help="text the generated characters continue")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="threads (BLAS and drug's thread pool, DRUG_THREADS); 1 by default: this model's small GEMMs gain little "
        "from a second thread and lose ~10x while another process holds a core (threads wait for each other)",
    )
    parser.add_argument(
        "--minutes",
        type=float,
        help="wall-clock budget of the train steps (compile and evaluation not counted); the lr decays over it",
    )
    known, _ = parser.parse_known_args()
    if known.smoke:
        parser.set_defaults(**SMOKE)
    args = parser.parse_args()
    if args.epochs < 1 or args.evals_per_epoch < 1:
        parser.error("--epochs and --evals-per-epoch must be at least 1")
    return args


def main() -> None:
    args = parse_args()
    threadpool_limits(args.threads, user_api="blas")
    os.environ["DRUG_THREADS"] = str(args.threads)  # drug's thread pool, read when it first compiles
    vocab = ptb_vocab()
    splits = {split: ptb_chars(split) for split in ("train", "valid", "test")}
    if args.smoke:
        splits = {split: data[: SMOKE_CHARS[split]] for split, data in splits.items()}

    start = time.perf_counter()
    m = build(args.cell, len(vocab), args.hidden, args.embed, args.seq, args.eval_seq, args.seed, args.scan)
    train = m.graph.compile(loss=m.loss, outputs=[m.last], optimizer=dg.Adam(lr=args.lr), backend=args.backend)
    evaluate = m.graph.compile(outputs=[m.eval_logits, m.eval_last], backend=args.backend)
    predict = m.graph.compile(outputs=[m.step_logits, m.step_state], backend=args.backend)
    compile_s = time.perf_counter() - start
    print(
        f"model: {args.cell} cell, hidden {args.hidden}, embedding {args.embed}, vocabulary {len(vocab)}; "
        f"compiled in {compile_s:.1f} s"
    )
    if args.resume:
        train.load(args.resume)
        print(f"resumed from {args.resume} (step {train.step_count})")

    def bpc(split: str) -> float:
        return bits_per_char(evaluate, splits[split], vocab.eos, args.hidden, args.eval_seq)

    rng = np.random.default_rng(args.seed)
    p = train_loop(train, lambda: bpc("valid"), splits["train"], args, rng)
    k = max(1, min(50, len(p.losses) // 4))
    print(
        f"train loss: first {np.mean(p.losses[:k]):.4f}, last {np.mean(p.losses[-k:]):.4f} "
        f"(means of {k} windows, {len(p.losses)} steps)"
    )
    test_bpc = bpc("test")
    if args.save:
        train.save(args.save)
    if args.plot:
        plot_curves(args.plot, p.curves, "step", f"Penn Treebank characters, {args.cell.upper()} {args.hidden}")
    generate(predict, vocab, args.hidden, args, rng)
    seconds = time.perf_counter() - start
    print(
        f"summary: valid {p.valid_bpc:.4f} bits/char, test {test_bpc:.4f} bits/char, {args.cell} {args.hidden}, "
        f"{p.tokens / max(p.seconds, 1e-9):,.0f} train tokens/s, {seconds:.0f} s "
        f"(compile {compile_s:.1f} s, train steps {p.seconds:.0f} s), backend {train.backend}"
    )


if __name__ == "__main__":
    main()
