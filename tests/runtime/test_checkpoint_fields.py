"""Checkpoints whose checksum is valid but whose fields are not (issue 16): every field is checked
for type, range and shape; member names and declared sizes are checked before anything is
inflated; saving keeps the file's mode, writes through symbolic links and clears the temporary
files of earlier saves that were killed."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tracemalloc
import zipfile

import numpy as np
import pytest

import drug as dg


def make_train(seed=0):
    g = dg.Graph(seed=seed)
    x = g.input("x", (None, 5))
    w = g.parameter("w", (5, 3))
    return g, g.compile(loss=dg.mean(dg.tanh(x @ w)), optimizer=dg.Adam(0.01), backend="numpy")


def digest(arrays: dict[str, np.ndarray]) -> str:
    """The checksum drug stores (the format in runtime/checkpoint.py, written out independently)."""
    h = hashlib.sha256()
    for key in sorted(arrays):
        value = np.ascontiguousarray(arrays[key])
        h.update(f"{key}|{value.dtype.str}|{value.shape}|".encode())
        h.update(value.tobytes())
    return h.hexdigest()


def arrays_of(path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def forged(path, change: dict, drop: tuple = (), compress: bool = False) -> bytes:
    """The checkpoint at `path` with arrays replaced or added (`change`) or removed (`drop`), and a
    checksum recomputed over the result, so that only the reader's field checks can refuse it."""
    arrays = arrays_of(path)
    del arrays["meta/sha256"]
    arrays.update(change)
    for key in drop:
        arrays.pop(key, None)
    arrays["meta/sha256"] = np.asarray(digest(arrays))
    out = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(out, **arrays)
    return out.getvalue()


@pytest.fixture
def saved(tmp_path):
    g, train = make_train()
    train(x=np.ones((2, 5), np.float32))
    path = tmp_path / "c.npz"
    train.save(path)
    return path


def assert_refused(tmp_path, raw: bytes, match: str) -> None:
    bad = tmp_path / "bad.npz"
    bad.write_bytes(raw)
    g, train = make_train(seed=1)
    before = [v.copy() for v in list(g.params.values()) + list(train.state.values())]
    with pytest.raises(dg.GraphError, match=match):
        train.load(bad)
    after = list(g.params.values()) + list(train.state.values())
    assert all(np.array_equal(a, b) for a, b in zip(before, after)) and train.step_count == 0


def peak_memory(function, *args) -> int:
    """The most memory Python and NumPy held at once while `function(*args)` ran."""
    tracemalloc.start()
    try:
        function(*args)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


BAD_STEPS = {
    "a vector": np.array([1, 2], np.int64),
    "a string": np.asarray("12"),
    "NaN": np.asarray(np.nan),
    "empty": np.zeros(0, np.int64),
    "1e300": np.asarray(1e300),
    "negative": np.asarray(-5, np.int64),
    "a fraction": np.asarray(2.7),
    "a boolean": np.asarray(True),
    "an int32": np.asarray(3, np.int32),
    "big-endian": np.asarray(3, ">i8"),
}


@pytest.mark.parametrize("what", list(BAD_STEPS))
def test_a_step_that_is_not_a_non_negative_int64_is_refused(tmp_path, saved, what):
    """With a valid checksum, these raised TypeError/ValueError/KeyError, or were accepted (1e300
    then made every later save() raise OverflowError)."""
    assert_refused(tmp_path, forged(saved, {"meta/step": BAD_STEPS[what]}), "meta/step")


def test_a_missing_step_is_refused(tmp_path, saved):
    assert_refused(tmp_path, forged(saved, {}, drop=("meta/step",)), "meta/step")


@pytest.mark.parametrize(
    "change,match",
    [
        ({"meta/format": np.asarray(["drug-checkpoint-1"])}, "not a drug checkpoint"),
        ({"meta/extra": np.zeros(3)}, "unexpected member 'meta/extra'"),
        ({"notes": np.zeros(3)}, "unexpected member 'notes'"),
        ({"param/w": np.zeros((5, 3), ">f4")}, "parameter 'w'"),
        ({"param/w": np.zeros((5, 3), np.float64)}, "parameter 'w'"),
        ({"param/w": np.zeros(15, np.float32)}, "parameter 'w'"),
        ({"param/w": np.asarray([{"a": 1}], object)}, "unreadable|parameter 'w'"),
    ],
)
def test_other_forged_fields_are_refused(tmp_path, saved, change, match):
    assert_refused(tmp_path, forged(saved, change), match)


def test_a_stored_checksum_that_is_not_one_string_is_refused(tmp_path, saved):
    arrays = arrays_of(saved)
    arrays["meta/sha256"] = np.asarray([str(arrays["meta/sha256"])])
    out = io.BytesIO()
    np.savez(out, **arrays)
    assert_refused(tmp_path, out.getvalue(), "not a drug checkpoint|corrupted")


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_a_duplicate_member_is_refused(tmp_path, saved):
    raw = io.BytesIO(saved.read_bytes())
    with zipfile.ZipFile(raw, "a") as z, zipfile.ZipFile(saved) as original:
        z.writestr("param/w.npy", original.read("param/w.npy"))
    assert_refused(tmp_path, raw.getvalue(), "twice")


def test_a_small_file_inflating_to_a_huge_member_is_refused_before_inflating(tmp_path, saved):
    """A 1 MiB checkpoint whose compressed parameter claims 1 GiB took 2 GiB of memory before it was
    refused: names and declared sizes are now checked against the graph first."""
    huge = np.zeros((1 << 28,), np.float32)  # 1 GiB, deflates to about 1 MiB
    raw = forged(saved, {"param/w": huge}, compress=True)
    del huge
    assert len(raw) < 4 << 20
    peak = peak_memory(assert_refused, tmp_path, raw, "parameter 'w'")
    assert peak < 64 << 20, f"{peak >> 20} MiB allocated while refusing the file"


def test_an_unknown_huge_member_is_refused_before_inflating(tmp_path, saved):
    raw = forged(saved, {"param/other": np.zeros((1 << 28,), np.float32)}, compress=True)
    assert peak_memory(assert_refused, tmp_path, raw, "unexpected parameter 'other'") < 64 << 20


def test_compressed_checkpoints_that_fit_still_load(tmp_path, saved):
    """np.savez_compressed output of the right arrays is a valid checkpoint (nothing else changes)."""
    raw = forged(saved, {}, compress=True)
    path = tmp_path / "compressed.npz"
    path.write_bytes(raw)
    g, train = make_train(seed=1)
    train.load(path)
    np.testing.assert_array_equal(g.params["w"], arrays_of(saved)["param/w"])
    assert train.step_count == 1


def test_resaving_keeps_the_files_mode(tmp_path):
    """save() wrote a fresh 0600 temporary file over the old one: 0644 became 0600."""
    _, train = make_train()
    path = tmp_path / "c.npz"
    train.save(path)
    os.chmod(path, 0o640)
    train.save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640


def test_a_new_checkpoint_gets_the_usual_mode(tmp_path):
    _, train = make_train()
    umask = os.umask(0o022)
    try:
        train.save(tmp_path / "new.npz")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(os.stat(tmp_path / "new.npz").st_mode) == 0o644


def test_saving_through_a_symlink_writes_its_target(tmp_path):
    """save() renamed its temporary file over the link itself, replacing the link by a file."""
    _, train = make_train()
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "c.npz"
    train.save(target)
    link = tmp_path / "latest.npz"
    link.symlink_to(target)
    train(x=np.ones((2, 5), np.float32))
    train.save(link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    g, other = make_train(seed=1)
    other.load(target)
    assert other.step_count == 1
    assert sorted(os.listdir(tmp_path / "real")) == ["c.npz"]


def test_stray_temporary_files_of_killed_saves_are_removed(tmp_path):
    """A save killed with SIGKILL leaves its temporary file; the next successful save of the same
    path removes it (and leaves other files, and other paths' temporary files, alone)."""
    _, train = make_train()
    path = tmp_path / "c.npz"
    train.save(path)
    dead_pid = 2**22 + 17  # above the kernel's pid_max default: no such process
    stray = tmp_path / f".tmp-c.npz.{dead_pid}.abc123.npz"
    stray.write_bytes(b"half a checkpoint")
    other = tmp_path / f".tmp-d.npz.{dead_pid}.abc123.npz"
    other.write_bytes(b"another path's")
    (tmp_path / "notes.txt").write_text("keep")
    train.save(path)
    assert sorted(os.listdir(tmp_path)) == sorted(["c.npz", other.name, "notes.txt"])


def test_thousands_of_unexpected_members_give_a_short_error(tmp_path, saved):
    """A forged file with 5,000 tiny members: refused with the first few named, not a message of
    every one (found by the issue-16 campaign)."""
    raw = forged(saved, {f"junk/{i}": np.zeros(1, np.int8) for i in range(5000)})
    bad = tmp_path / "bad.npz"
    bad.write_bytes(raw)
    _, train = make_train(seed=1)
    with pytest.raises(dg.GraphError, match="unexpected member 'junk/0'") as info:
        train.load(bad)
    assert len(str(info.value)) < 2000 and "more" in str(info.value)
