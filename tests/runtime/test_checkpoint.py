"""Checkpoints: bit-exact round trips, identical resumption, refusal of mismatched or damaged
files (changing nothing), and atomic writes."""

from __future__ import annotations

import io
import os
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import drug as dg


def make_train(hidden=4, seed=0, name="w2", optimizer=None):
    g = dg.Graph(seed=seed)
    x, y = g.input("x", (None, 5)), g.input("y", (None,), dtype="int32")
    w1, b1 = g.parameter("w1", (5, hidden)), g.parameter("b1", (hidden,), init="zeros")
    w2 = g.parameter(name, (hidden, 3))
    loss = dg.softmax_cross_entropy(dg.relu(x @ w1 + b1) @ w2, y)
    return g, g.compile(loss=loss, optimizer=optimizer or dg.Adam(0.01), backend="numpy")


def batch(i):
    rng = np.random.default_rng(100 + i)
    return {"x": rng.standard_normal((8, 5)).astype(np.float32), "y": rng.integers(0, 3, 8).astype(np.int32)}


def snapshot(g, train):
    return (
        {k: v.copy() for k, v in g.params.items()},
        {k: v.copy() for k, v in train.state.items()},
        train.step_count,
    )


def assert_same(a, b):
    (pa, sa, na), (pb, sb, nb) = a, b
    assert na == nb
    assert pa.keys() == pb.keys() and sa.keys() == sb.keys()
    for k in pa:
        assert pa[k].dtype == pb[k].dtype
        np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)


def test_round_trip_is_bit_exact(tmp_path):
    g, train = make_train()
    for i in range(3):
        train(**batch(i))
    saved = snapshot(g, train)
    path = tmp_path / "ckpt.npz"
    train.save(path)

    g2, train2 = make_train(seed=99)  # different initial values, same structure
    train2.load(path)
    assert_same(snapshot(g2, train2), saved)
    assert train2.step_count == 3
    assert any(np.any(v != 0) for v in train2.state.values()), "optimizer state must be restored too"


def test_training_after_load_resumes_identically(tmp_path):
    g, train = make_train()
    for i in range(6):
        train(**batch(i))
    uninterrupted = snapshot(g, train)

    g1, first = make_train()
    for i in range(3):
        first(**batch(i))
    first.save(tmp_path / "half.npz")
    g2, second = make_train(seed=7)
    second.load(tmp_path / "half.npz")
    losses = [second(**batch(i)) for i in range(3, 6)]
    assert_same(snapshot(g2, second), uninterrupted)
    assert all(np.isfinite(losses))


def test_predictor_loads_a_training_checkpoint(tmp_path):
    g, train = make_train()
    train(**batch(0))
    train.save(tmp_path / "c.npz")
    g2 = dg.Graph(seed=5)
    x = g2.input("x", (None, 5))
    w1, b1 = g2.parameter("w1", (5, 4)), g2.parameter("b1", (4,), init="zeros")
    predict = g2.compile(outputs=dg.relu(x @ w1 + b1), backend="numpy")
    predict.load(tmp_path / "c.npz")
    np.testing.assert_array_equal(g2.params["w1"], g.params["w1"])
    np.testing.assert_array_equal(g2.params["b1"], g.params["b1"])


@pytest.mark.parametrize(
    "other,problem",
    [
        (dict(hidden=6), "parameter 'w1' is (5, 4) float32 in the file, (5, 6) float32 here"),
        (dict(name="w_out"), "missing parameter 'w_out'"),
        (dict(name="w_out"), "unexpected parameter 'w2'"),
        (dict(optimizer=dg.SGD(0.1, momentum=0.9)), "optimizer state"),
    ],
)
def test_mismatched_graph_is_refused_and_nothing_changes(tmp_path, other, problem):
    g, train = make_train()
    train(**batch(0))
    train.save(tmp_path / "c.npz")
    g2, train2 = make_train(seed=3, **other)
    train2(**batch(1))
    before = snapshot(g2, train2)
    with pytest.raises(dg.GraphError) as info:
        train2.load(tmp_path / "c.npz")
    assert problem in str(info.value)
    assert "nothing was loaded" in str(info.value)
    assert_same(snapshot(g2, train2), before)


def data_ranges(raw: bytes) -> dict[str, range]:
    """Byte range of each member's data in an uncompressed .npz (zip) file."""
    with zipfile.ZipFile(io.BytesIO(raw)) as z:
        infos = z.infolist()
    out = {}
    for info in infos:
        at = info.header_offset
        name_len = int.from_bytes(raw[at + 26 : at + 28], "little")
        extra_len = int.from_bytes(raw[at + 28 : at + 30], "little")
        start = at + 30 + name_len + extra_len
        out[info.filename] = range(start, start + info.file_size)
    return out


def saved_checkpoint(tmp_path) -> tuple[object, bytes]:
    """A trained model's checkpoint: its path and bytes."""
    _, train = make_train()
    train(**batch(0))
    path = tmp_path / "c.npz"
    train.save(path)
    return path, path.read_bytes()


def assert_refused(path, damaged: bytes, match: str) -> None:
    """Loading `damaged` into a fresh graph raises GraphError and changes nothing."""
    path.write_bytes(damaged)
    g2, train2 = make_train(seed=3)
    before = snapshot(g2, train2)
    with pytest.raises(dg.GraphError, match=match):
        train2.load(path)
    assert_same(snapshot(g2, train2), before)


def test_bit_flip_in_a_parameter_is_detected(tmp_path):
    path, raw = saved_checkpoint(tmp_path)
    damaged = bytearray(raw)
    damaged[data_ranges(raw)["param/w1.npy"][-1]] ^= 0x01  # last byte of w1's data
    assert_refused(path, bytes(damaged), "corrupt|unreadable|truncated")


def test_any_bit_flip_in_the_zip_structure_is_refused_or_harmless(tmp_path):
    """Flipping a bit of a zip header or directory either raises GraphError or (in fields the
    reader ignores) loads exactly the saved values: never another exception, never other values.
    (Flips in the arrays' data are the checksum's job, tested above.)"""
    g, train = make_train(hidden=2, optimizer=dg.SGD(0.1))  # few zip members: a quick exhaustive sweep
    train(**batch(0))
    good = tmp_path / "good.npz"
    train.save(good)
    saved = snapshot(g, train)
    raw = good.read_bytes()
    in_data = set().union(*data_ranges(raw).values())
    bad = tmp_path / "bad.npz"
    g2, train2 = make_train(hidden=2, seed=3, optimizer=dg.SGD(0.1))
    before = snapshot(g2, train2)
    refused = 0
    for position in (p for p in range(len(raw)) if p not in in_data):
        flipped = bytearray(raw)
        flipped[position] ^= 1 << (position % 8)
        bad.write_bytes(bytes(flipped))
        try:
            train2.load(bad)
        except dg.GraphError:
            refused += 1
            assert_same(snapshot(g2, train2), before)
        else:
            assert_same(snapshot(g2, train2), saved)
            before = saved  # what a later refused load must leave unchanged
    assert refused > 0


@pytest.mark.parametrize("keep", [0, 10, 0.5, -1])
def test_truncated_file_is_refused(tmp_path, keep):
    path, raw = saved_checkpoint(tmp_path)
    n = keep if isinstance(keep, int) and keep >= 0 else int(len(raw) * keep) if keep > 0 else len(raw) - 1
    assert_refused(path, raw[:n], "unreadable or truncated|corrupt|not a drug checkpoint")


def test_a_foreign_npz_is_refused(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, w1=np.zeros((5, 4), np.float32))
    _, train = make_train()
    with pytest.raises(dg.GraphError, match="not a drug checkpoint"):
        train.load(path)


def test_missing_file_is_file_not_found(tmp_path):
    g, train = make_train()
    before = {k: v.copy() for k, v in g.params.items()}
    with pytest.raises(FileNotFoundError, match="nope.npz") as info:
        train.load(tmp_path / "nope.npz")
    assert info.value.filename == str(tmp_path / "nope.npz")
    assert all(np.array_equal(before[k], g.params[k]) for k in before)


def test_save_is_atomic(tmp_path, monkeypatch):
    g, train = make_train()
    path = tmp_path / "c.npz"
    train.save(path)
    assert os.listdir(tmp_path) == ["c.npz"], "no temporary files are left behind"
    good = path.read_bytes()

    train(**batch(0))

    def exploding_savez(file, **arrays):
        file.write(b"partial data")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", exploding_savez)
    with pytest.raises(OSError, match="disk full"):
        train.save(path)
    assert os.listdir(tmp_path) == ["c.npz"], "a failed save leaves no temporary file"
    assert path.read_bytes() == good, "a failed save leaves the previous checkpoint intact"
    monkeypatch.undo()

    train.save(path)
    assert os.listdir(tmp_path) == ["c.npz"]
    assert path.read_bytes() != good


CHILD = """
import sys
import numpy as np
import drug as dg

g = dg.Graph(seed=0)
x = g.input("x", (None, 1024))
w = g.parameter("w", (1024, 4096))  # 16 MB: a save takes long enough to be killed inside it
train = g.compile(loss=dg.mean(x @ w), optimizer=dg.SGD(0.1), backend="numpy")
version = 0
while True:
    version += 1
    g.params["w"][...] = version
    train.step_count = version
    train.save(sys.argv[1])
    print(version, flush=True)
"""


def test_sigkill_during_saves_leaves_the_previous_checkpoint(tmp_path):
    """A process saving over and over is killed with SIGKILL at a random moment (mostly inside a
    save: writing, fsync or rename); the file left behind always loads and holds one complete
    version (the last one reported, or the next if the kill came between its rename and print)."""
    import random
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "c.npz"
    rng = random.Random(8)
    for round_ in range(3):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True)
        first = child.stdout.readline()  # a complete checkpoint exists from here on
        assert first.strip(), "the child did not save"
        time.sleep(rng.uniform(0.0, 0.4))
        child.send_signal(signal.SIGKILL)
        reported = [int(first)] + [int(line) for line in child.stdout.read().split()]
        child.wait()
        assert child.returncode == -signal.SIGKILL
        g = dg.Graph(seed=1)
        x = g.input("x", (None, 1024))
        loader = g.compile(loss=dg.mean(x @ g.parameter("w", (1024, 4096))), optimizer=dg.SGD(0.1), backend="numpy")
        loader.load(path)
        assert loader.step_count in (reported[-1], reported[-1] + 1), (round_, loader.step_count, reported[-1])
        w = g.params["w"]
        assert w.min() == w.max() == loader.step_count, "parameters from two different saves"


def rewritten(path, member: str, header: str) -> bytes:
    """The checkpoint with `member`'s .npy header replaced (zip CRCs recomputed, so only the
    reader's own checks can notice)."""
    out = io.BytesIO()
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename == member:  # a 128-byte version 1.0 header, then the data
                text = header.encode()
                pad = 63 - (10 + len(text)) % 64
                size = (len(text) + pad + 1).to_bytes(2, "little")
                data = b"\x93NUMPY\x01\x00" + size + text + b" " * pad + b"\n" + data[128:]
            zout.writestr(info, data)
    return out.getvalue()


@pytest.mark.parametrize(
    "header",
    [
        "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000, 4), }",  # MemoryError
        "{'descr': '<f4', 'fortran_order': False, 'shape': (5, 4), ",  # tokenize.TokenError
        "{'descr': '<f4', 'fortran_order': False, 'shape': (5, 4)) }",  # SyntaxError
        "{'descr': '<f6', 'fortran_order': False, 'shape': (5, 4), }",
    ],
)
def test_forged_array_headers_are_refused(tmp_path, header):
    """Found while fuzzing: a .npy header claiming a huge shape raised a bare MemoryError, a
    mangled one tokenize.TokenError, instead of the checkpoint error."""
    path, _ = saved_checkpoint(tmp_path)
    assert_refused(path, rewritten(path, "param/w1.npy", header), "unreadable or truncated|corrupt")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_damage_is_refused_or_harmless(tmp_path, data):
    """Random bytes overwritten anywhere (headers and data) and random truncation: the load either
    raises GraphError and changes nothing, or (damage in fields the reader ignores) restores
    exactly the saved values."""
    g, train = make_train(hidden=2, optimizer=dg.SGD(0.1))
    train(**batch(0))
    good = tmp_path / "good.npz"
    train.save(good)
    raw = bytearray(good.read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    raw = raw[: data.draw(st.integers(0, len(raw)))] if data.draw(st.booleans()) else raw
    bad = tmp_path / "bad.npz"
    bad.write_bytes(bytes(raw))
    g2, train2 = make_train(hidden=2, seed=3, optimizer=dg.SGD(0.1))
    before = snapshot(g2, train2)
    try:
        train2.load(bad)
    except dg.GraphError:
        assert_same(snapshot(g2, train2), before)
    else:
        assert_same(snapshot(g2, train2), snapshot(g, train))
