"""Penn Treebank characters: the shipped data and its loader, drug.decoding's search and sampling,
and smoke runs of examples/ptb_char_rnn.py."""

from __future__ import annotations

import gzip
import itertools
import math
import re
import shutil
import sys

import numpy as np
import pytest
from conftest import EXAMPLES, run_example

from drug import datasets
from drug.datasets import ptb_chars, ptb_vocab
from drug.decoding import beam_search, greedy, log_softmax, sample

# ---------------------------------------------------------------- data


@pytest.mark.parametrize("split, lines", [("train", 42068), ("valid", 3370), ("test", 3761)])
def test_splits_have_one_end_of_sentence_per_line(split, lines):
    ids = ptb_chars(split)
    assert ids.dtype == np.int32 and ids.ndim == 1
    assert int((ids == ptb_vocab().eos).sum()) == lines
    assert ids[-1] == ptb_vocab().eos
    assert 0 <= ids.min() and ids.max() < len(ptb_vocab())


def test_vocabulary_is_the_sorted_training_characters():
    vocab = ptb_vocab()
    assert len(vocab) == 50
    assert list(vocab.symbols) == sorted(vocab.symbols)
    assert vocab.symbols[:2] == ("\n", " ") and vocab.eos == 0
    assert "_" not in vocab.symbols  # word boundaries decode to spaces
    assert set(np.unique(ptb_chars("train"))) == set(range(50))


def test_round_trip_on_the_real_text():
    raw = gzip.decompress((datasets.DATA / "ptb" / "ptb.char.valid.txt.gz").read_bytes()).decode("ascii")
    lines = raw.split("\n")[:200]
    plain = "".join("".join(line.split()).replace("_", " ") + "\n" for line in lines)
    ids = ptb_vocab().encode(plain)
    np.testing.assert_array_equal(ids, ptb_chars("valid")[: len(ids)])
    assert ptb_vocab().decode(ids) == plain
    first = "consumers may want to move their telephones a little closer to the tv set\n"
    assert plain.startswith(first)


def test_vocabulary_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"'\{' at position 3"):
        ptb_vocab().encode("abc{")
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 50\)"):
        ptb_vocab().decode([1, 50])
    with pytest.raises(ValueError, match="split must be one of"):
        ptb_chars("validation")


def test_damaged_copy_fails_its_checksum(tmp_path, monkeypatch):
    (tmp_path / "ptb").mkdir()
    shutil.copy(datasets.DATA / "ptb" / "SHA256SUMS", tmp_path / "ptb")
    raw = bytearray((datasets.DATA / "ptb" / "ptb.char.valid.txt.gz").read_bytes())
    raw[len(raw) // 2] ^= 0x01
    (tmp_path / "ptb" / "ptb.char.valid.txt.gz").write_bytes(bytes(raw))
    monkeypatch.setattr(datasets, "DATA", tmp_path)
    with pytest.raises(OSError, match="damaged"):
        ptb_chars("valid")


# ---------------------------------------------------------------- decoding


def markov_step(table: np.ndarray):
    """A first-order chain as a decoding step: log P(next | last token); the state (a per-row
    counter) is carried along only to check that rows follow their hypotheses."""

    def step(tokens, state):
        return table[tokens], state + 1

    return step


def order2_step(table: np.ndarray):
    """A second-order chain: the state is {"prev": the token before the last} per hypothesis."""

    def step(tokens, state):
        return table[state["prev"], tokens], {"prev": tokens.copy()}

    return step


def brute_force(step, state, start, vocab, length):
    """Every sequence of `length` tokens with its total log-probability, best first (one
    hypothesis at a time: a reference that shares no batching code with drug.decoding)."""
    scored = []
    for seq in itertools.product(range(vocab), repeat=length):
        s, last, total = state, start, 0.0
        for token in seq:
            log_probs, s = step(np.array([last]), s)
            total += float(log_probs[0, token])
            last = token
        scored.append((total, seq))
    scored.sort(key=lambda item: -item[0])
    return scored


def argmax_decode(step, state, start, length):
    tokens, last = [], start
    for _ in range(length):
        log_probs, state = step(np.array([last]), state)
        last = int(np.argmax(log_probs[0]))
        tokens.append(last)
    return tokens


# From token 0, greedy takes 1 (p 0.55) but every continuation of 1 is flat, while 2 (p 0.45)
# is almost surely followed by 2: the best sequence of length 3 starts 0 -> 2.
TRAP = np.log(
    np.array(
        [
            [0.00, 0.55, 0.45],
            [0.34, 0.33, 0.33],
            [0.02, 0.03, 0.95],
        ]
    )
    + 1e-12
)


def test_beam_search_beats_greedy_where_greedy_is_not_optimal():
    step, h = markov_step(TRAP), np.zeros((1, 1))
    best_score, best_seq = brute_force(step, h, 0, 3, 3)[0]
    greedy_result = greedy(step, h, 0, 3)
    assert greedy_result.score < best_score - 0.1, "the test model must trap greedy decoding"
    for width in (2, 3, 5):
        top = beam_search(step, h, 0, width, 3)
        assert tuple(top[0].tokens) == best_seq
        assert top[0].score == pytest.approx(best_score)
        assert [hyp.score for hyp in top] == sorted((hyp.score for hyp in top), reverse=True)


def test_width_one_is_greedy_decoding():
    rng = np.random.default_rng(0)
    for _ in range(5):
        table = log_softmax(rng.normal(size=(4, 4, 4)) * 2)
        step, state = order2_step(table), {"prev": np.array([1])}
        (only,) = beam_search(step, state, 2, 1, 6)
        expected = argmax_decode(step, state, 2, 6)
        assert list(only.tokens) == expected == list(greedy(step, state, 2, 6).tokens)
        assert only.score == pytest.approx(greedy(step, state, 2, 6).score)


def test_exhaustive_width_returns_the_brute_force_ranking():
    rng = np.random.default_rng(1)
    vocab, length = 3, 4
    for _ in range(3):
        table = log_softmax(rng.normal(size=(vocab, vocab, vocab)) * 2)
        step, state = order2_step(table), {"prev": np.array([0])}
        width = vocab ** (length - 1)  # every prefix survives: the search is exact
        got = beam_search(step, state, 1, width, length)
        expected = brute_force(step, state, 1, vocab, length)[:width]
        assert [tuple(h.tokens) for h in got] == [seq for _, seq in expected]
        np.testing.assert_allclose([h.score for h in got], [s for s, _ in expected], rtol=1e-12)
        # a narrower beam still finds the best sequence of these small chains
        assert tuple(beam_search(step, state, 1, 3, length)[0].tokens) == expected[0][1]


def test_sampling_approaches_greedy_as_temperature_goes_to_zero():
    rng = np.random.default_rng(0)
    table = log_softmax(rng.normal(size=(5, 5, 5)) * 2)
    top2 = np.sort(table, axis=-1)[..., -2:]
    assert (top2[..., 1] - top2[..., 0]).min() > 0.1, (
        "a clear best token everywhere: at T = 1e-3 the runner-up has odds e**-100"
    )
    step, state = order2_step(table), {"prev": np.array([3])}
    best = greedy(step, state, 0, 12)
    for temperature in (0.0, 1e-3):
        for drawn in sample(step, state, 0, 12, temperature, n=20, rng=rng):
            np.testing.assert_array_equal(drawn.tokens, best.tokens)
    hot = sample(step, state, 0, 12, 5.0, n=20, rng=rng)
    assert any(not np.array_equal(h.tokens, best.tokens) for h in hot)


def test_sampling_at_temperature_one_follows_the_model():
    rng = np.random.default_rng(3)
    step, h = markov_step(TRAP), np.zeros((1, 1))
    drawn = sample(step, h, 1, 2, 1.0, n=6000, rng=rng)
    first = np.bincount([d.tokens[0] for d in drawn], minlength=3) / len(drawn)
    np.testing.assert_allclose(first, np.exp(TRAP[1]), atol=0.025)  # ~4 standard errors
    for d in drawn[:50]:  # scores are the model's log-probabilities of the drawn tokens
        assert d.score == pytest.approx(TRAP[1, d.tokens[0]] + TRAP[d.tokens[0], d.tokens[1]])


def test_decoding_rejects_a_step_of_the_wrong_shape():
    def step(tokens, state):
        return np.zeros((len(tokens) + 1, 3)), state

    with pytest.raises(ValueError, match=r"shape \(1, V\)"):
        beam_search(step, np.zeros((1, 1)), 0, 2, 3)
    with pytest.raises(ValueError, match="width must be at least 1"):
        beam_search(markov_step(TRAP), np.zeros((1, 1)), 0, 0, 3)


# ---------------------------------------------------------------- the example


def test_evaluator_and_one_step_predictor_agree():
    """bits_per_char (windows of the unrolled evaluator, padding masked) equals the mean surprise
    of the same characters read one at a time by the one-step predictor: same parameters."""
    sys.path.insert(0, str(EXAMPLES))
    import ptb_char_rnn as ex

    m = ex.build("gru", 50, hidden=16, embed=8, seq=4, eval_seq=8, seed=3)
    evaluate = m.graph.compile(outputs=[m.eval_logits, m.eval_last])
    step = ex.one_step(m.graph.compile(outputs=[m.step_logits, m.step_state]))
    data, eos = ptb_chars("valid")[:61], ptb_vocab().eos  # 61: the last window is padded
    h, last, nats = np.zeros((1, 16), np.float32), eos, 0.0
    for token in data:
        log_probs, h = step(np.array([last]), h)
        nats -= log_probs[0, token]
        last = token
    expected = nats / len(data) / math.log(2)
    assert ex.bits_per_char(evaluate, data, eos, 16, 8, streams=1) == pytest.approx(expected, rel=1e-5)


def parse_run(out: str) -> dict:
    first, last = map(float, re.search(r"train loss: first ([\d.]+), last ([\d.]+)", out).groups())
    valid, test = map(float, re.search(r"summary: valid ([\d.]+) bits/char, test ([\d.]+) bits/char", out).groups())
    beam = re.search(r"generated \(beam search, width 5, [\d.]+ bits/char\):\n(.+)", out)
    sampled = re.search(r"generated \(sampled, temperature [\d.]+, [\d.]+ bits/char\):\n(.+)", out)
    assert beam and sampled, f"no generated text in:\n{out}"
    return {"first": first, "last": last, "valid": valid, "test": test, "beam": beam[1], "sampled": sampled[1]}


@pytest.mark.parametrize("cell", ["rnn", "gru"])
def test_example_smoke_run_learns_and_generates(cell):
    run = parse_run(run_example("ptb_char_rnn.py", "--smoke", "--cell", cell))
    assert run["last"] < run["first"] - 0.2, run
    uniform = math.log2(50)
    assert run["valid"] < uniform and run["test"] < uniform, run
    assert run["beam"].strip() and run["sampled"].strip()


def test_example_saves_and_resumes(tmp_path):
    ckpt, png = tmp_path / "ptb.npz", tmp_path / "curves.png"
    first = parse_run(run_example("ptb_char_rnn.py", "--smoke", "--save", str(ckpt), "--plot", str(png)))
    assert ckpt.exists() and png.stat().st_size > 0
    out = run_example("ptb_char_rnn.py", "--smoke", "--resume", str(ckpt))
    assert f"resumed from {ckpt}" in out
    again = parse_run(out)
    assert again["first"] < first["first"] - 0.2, "a resumed run starts from the trained parameters"


def test_scan_mode_gives_the_unrolled_results():
    """`--scan` compiles the time loop once (dg.scan) instead of unrolling it: same training run
    up to float32 summation order."""
    unrolled = parse_run(run_example("ptb_char_rnn.py", "--smoke"))
    scanned = parse_run(run_example("ptb_char_rnn.py", "--smoke", "--scan"))
    for key in ("first", "last", "valid", "test"):
        assert scanned[key] == pytest.approx(unrolled[key], rel=2e-3), key
