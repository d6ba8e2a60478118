"""Decoding sequences from a next-token model: beam search, greedy decoding and sampling.

The model is a function `step(tokens, state) -> (log_probs, new_state)` over a batch of k
hypotheses: `tokens` (k,) are their last tokens, `state` holds k rows (an array, or a tuple, list
or dict of arrays whose first axis is k) and `log_probs` (k, V) scores every next token. One call
advances every hypothesis at once, so a compiled one-step predictor runs once per position, not
once per hypothesis. The functions are plain NumPy and know nothing about graphs.

    def step(tokens, h):
        logits, h = predict(tok=tokens, h=h)
        return log_softmax(logits), h

    best = beam_search(step, h0, start=vocab.eos, width=5, length=200)[0]
    text = vocab.decode(best.tokens)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

State = Any  # an array with a leading hypothesis axis, or a tuple/list/dict of them
Step = Callable[[np.ndarray, State], tuple[np.ndarray, State]]


class Hypothesis(NamedTuple):
    """A decoded sequence (without its start token) and its total log-probability."""

    tokens: np.ndarray
    score: float


def log_softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Normalized log-probabilities, computed stably (for models that return logits)."""
    shifted = logits - logits.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def take_rows(state: State, rows: np.ndarray) -> State:
    """`state` with its hypotheses reordered or repeated: row i of the result is row rows[i]."""
    if isinstance(state, np.ndarray):
        return state[rows]
    if isinstance(state, tuple | list):
        return type(state)(take_rows(s, rows) for s in state)
    if isinstance(state, dict):
        return {key: take_rows(value, rows) for key, value in state.items()}
    if state is None:
        return None
    raise TypeError(f"decoding state must be an array, a tuple/list/dict of arrays or None, got {type(state).__name__}")


def _advance(step: Step, tokens: np.ndarray, state: State, k: int) -> tuple[np.ndarray, State]:
    """One model call, with its log-probabilities checked: a wrong shape would decode garbage."""
    log_probs, state = step(tokens, state)
    log_probs = np.asarray(log_probs, dtype=np.float64)
    if log_probs.ndim != 2 or log_probs.shape[0] != k:
        raise ValueError(f"step must return log-probabilities of shape ({k}, V) for {k} tokens, got {log_probs.shape}")
    if np.isnan(log_probs).any():
        raise ValueError("step returned NaN log-probabilities")
    return log_probs, state


def _check(width: int, length: int, what: str = "width") -> None:
    if width < 1:
        raise ValueError(f"{what} must be at least 1, got {width}")
    if length < 0:
        raise ValueError(f"length must be non-negative, got {length}")


def beam_search(step: Step, state: State, start: int, width: int, length: int) -> list[Hypothesis]:
    """The `width` best continuations of `start` of exactly `length` tokens found by beam search,
    best first. `state` is the model state (one row) before it reads `start`.

    Each position extends every kept hypothesis by every token and keeps the `width` highest total
    log-probabilities (ties go to the lower hypothesis, then the lower token, so results are
    deterministic). Width 1 is greedy decoding; a width of V**(length-1) or more is exhaustive."""
    _check(width, length)
    tokens = np.full(1, start, dtype=np.int64)
    history = np.zeros((1, 0), dtype=np.int64)
    scores = np.zeros(1)
    for _ in range(length):
        log_probs, state = _advance(step, tokens, state, len(tokens))
        total = (scores[:, None] + log_probs).reshape(-1)
        keep = min(width, total.size)
        # stable sort of the negated scores: among equal scores the lower flat index wins
        best = np.argsort(-total, kind="stable")[:keep]
        parents, tokens = np.divmod(best, log_probs.shape[1])
        history = np.concatenate([history[parents], tokens[:, None]], axis=1)
        scores = total[best]
        state = take_rows(state, parents)
    return [Hypothesis(history[i], float(scores[i])) for i in range(len(scores))]


def greedy(step: Step, state: State, start: int, length: int) -> Hypothesis:
    """The continuation that takes the most probable token at every position (ties: lowest id)."""
    return sample(step, state, start, length, temperature=0.0)[0]


def sample(
    step: Step,
    state: State,
    start: int,
    length: int,
    temperature: float = 1.0,
    n: int = 1,
    rng: np.random.Generator | None = None,
) -> list[Hypothesis]:
    """`n` independent continuations of `start`, each token drawn from softmax(log_probs / T),
    advanced together in one batch. T = 1 samples the model's distribution, T < 1 sharpens it and
    T = 0 is greedy decoding (the limit of T -> 0). Scores are the model's untempered
    log-probabilities of the drawn tokens."""
    _check(n, length, "n")
    if not temperature >= 0:
        raise ValueError(f"temperature must be non-negative, got {temperature}")
    rng = rng if rng is not None else np.random.default_rng()
    tokens = np.full(n, start, dtype=np.int64)
    state = take_rows(state, np.zeros(n, dtype=np.int64))
    out = np.zeros((n, length), dtype=np.int64)
    scores = np.zeros(n)
    for t in range(length):
        log_probs, state = _advance(step, tokens, state, n)
        if temperature == 0:
            tokens = log_probs.argmax(axis=1)
        else:
            # inverse-CDF sampling, one uniform number per hypothesis
            cdf = np.cumsum(np.exp(log_softmax(log_probs / temperature)), axis=1)
            u = rng.random(n)[:, None] * cdf[:, -1:]
            tokens = np.minimum((cdf <= u).sum(axis=1), log_probs.shape[1] - 1)
        scores += log_probs[np.arange(n), tokens]
        out[:, t] = tokens
    return [Hypothesis(out[i], float(scores[i])) for i in range(n)]
