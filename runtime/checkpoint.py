"""Checkpoints: parameters, state buffers, optimizer state and step count in one .npz, written
atomically and checked by a SHA-256 so that a torn or corrupted file is never loaded.

Reading trusts nothing in the file: member names are checked against what the caller wants before
anything is read, declared sizes against the arrays they must fill before anything is inflated
(a small file may deflate to gigabytes), every .npy header for dtype, order and shape, and every
field (meta/step a non-negative int64 scalar, meta/format, meta/sha256 strings) for type, range
and shape. Members nobody wants (another function's parameters) are hashed as they stream by.
The C runtime of drug-compile's libraries (aot/csrc/rt_checkpoint.c) applies the same rules."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import math
import os
import re
import secrets
import struct
import tokenize
import zipfile
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..compiler.optimizers import LR_KEY
from ..core.errors import GraphError

FORMAT = "drug-checkpoint-1"
META = ("meta/step", "meta/format", "meta/sha256")
KINDS = {"param/": "parameter", "buffer/": "state buffer", "state/": "optimizer state"}
MAX_HEADER = 65_536 + 12  # the largest .npy header numpy reads by default, with its preamble
MAX_META_BYTES = 4096
CHUNK = 1 << 20
MAX_LISTED = 20  # problems named in an error (a forged file may have thousands of members)
_TEMPORARY = re.compile(r"\.(\d+)\.[0-9a-f]+\.npz")  # after ".tmp-<name>": ".<pid>.<random>.npz"

# What a damaged or forged file makes the zip and .npy readers raise (zlib.error: a damaged deflate
# stream; RuntimeError, NotImplementedError: encryption or an unknown compression method claimed;
# SyntaxError, TokenError, TypeError: a mangled .npy header dictionary; struct.error: short fields).
_UNREADABLE = (
    OSError, ValueError, RuntimeError, EOFError, zipfile.BadZipFile, zlib.error, KeyError, IndexError,
    TypeError, SyntaxError, tokenize.TokenError, OverflowError, MemoryError, struct.error,
)  # fmt: skip


def _hash_prefix(key: str, dtype: np.dtype, shape: tuple) -> bytes:
    """What the digest covers before an array's bytes. A 0-d array is hashed as (1,), as
    np.ascontiguousarray made it when the format was defined."""
    return f"{key}|{dtype.str}|{shape if shape else (1,)}|".encode()


def _digest(arrays: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in sorted(arrays):
        value = np.asarray(arrays[key])
        h.update(_hash_prefix(key, value.dtype, value.shape))
        h.update(_bytes_of(value))
    return h.hexdigest()


# ---- writing ----


def save(
    path: str | os.PathLike,
    params: Mapping[str, np.ndarray],
    state: Mapping[str, np.ndarray],
    step: int,
    buffers: Mapping[str, np.ndarray] | None = None,
) -> None:
    """Write atomically: a temporary file beside the target (through a symbolic link: beside the
    file it points to), fsynced, given the old file's mode, renamed over it. Temporary files left
    by earlier saves of the same path that were killed are removed after a successful save.
    `state` is the optimizer state (by key), `buffers` the graph's state buffers (by name)."""
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or not 0 <= step < 2**63:
        raise GraphError(f"the step count must be an integer in [0, 2**63), got {step!r}")
    arrays = {f"param/{k}": v for k, v in params.items()}
    arrays |= {f"state/{k}": v for k, v in state.items()}
    arrays |= {f"buffer/{k}": v for k, v in (buffers or {}).items()}
    arrays["meta/step"] = np.asarray(step, np.int64)
    arrays["meta/format"] = np.asarray(FORMAT)
    arrays["meta/sha256"] = np.asarray(_digest(arrays))
    target = os.path.realpath(path)
    directory, name = os.path.split(target)
    mode = _mode_for(target)
    prefix = f".tmp-{name[:120]}"
    tmp = os.path.join(directory, f"{prefix}.{os.getpid()}.{secrets.token_hex(6)}.npz")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if mode is not None else 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _sync_directory(directory)
    _remove_stray_temporaries(directory, prefix)


def _mode_for(target: str) -> int | None:
    """The permission bits of the file being replaced; None for a new file (the umask decides)."""
    try:
        return os.stat(target).st_mode & 0o7777
    except FileNotFoundError:
        return None


def _sync_directory(directory: str) -> None:
    """Make the rename durable (best effort: some filesystems cannot fsync a directory)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove_stray_temporaries(directory: str, prefix: str) -> None:
    """Delete `prefix.<pid>.<random>.npz` files whose writing process no longer exists (a save
    killed mid-way); a live process's file may be a save in progress and is left alone."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory):
            if not entry.name.startswith(prefix):
                continue
            found = _TEMPORARY.fullmatch(entry.name[len(prefix) :])
            if found and not _alive(int(found.group(1))):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # no such process (or no such pid at all)
        return False
    except PermissionError:  # another user's process
        return True
    return True


# ---- reading ----


def read(
    path: str | os.PathLike, wanted: Mapping[str, np.ndarray], exact: bool, optimizer: Any = None
) -> tuple[dict[str, np.ndarray], int]:
    """New arrays for the `wanted` members ("param/<name>", "buffer/<name>", "state/<key>" -> the
    array each must fit: same shape and dtype) and the step count, after checking the whole file;
    GraphError naming every problem otherwise. `exact`: the file holds exactly these members (a
    train step); else other param/, buffer/ and state/ members may be there too (a predictor
    loading a training checkpoint), read only for the checksum. `optimizer`: the step's, to say so
    when the file was saved by a step with another one. FileNotFoundError if there is no file at
    `path`."""
    if not os.path.isfile(path):
        raise FileNotFoundError(errno.ENOENT, "no checkpoint file", os.fspath(path))
    try:
        with zipfile.ZipFile(path) as archive:
            return _Reader(archive, path, wanted, exact, optimizer).read()
    except GraphError:
        raise
    except _UNREADABLE as error:
        raise GraphError(f"checkpoint {path} is unreadable or truncated: {error}") from None


class _Reader:
    def __init__(self, archive: zipfile.ZipFile, path, wanted: Mapping[str, np.ndarray], exact: bool, optimizer):
        self.archive, self.path, self.wanted, self.exact = archive, path, wanted, exact
        self.optimizer = optimizer

    def read(self) -> tuple[dict[str, np.ndarray], int]:
        members = self._members()
        self._check_sizes(members)
        h = hashlib.sha256()
        values: dict[str, np.ndarray] = {}
        problems: list[str] = []
        for key in sorted(k for k in members if k != "meta/sha256"):
            value = self._member(key, members[key], h, problems)
            if value is not None:
                values[key] = value
        stored = self._member("meta/sha256", members["meta/sha256"], None, problems)
        if str(values.get("meta/format", "")) != FORMAT or not _is_text(stored, 64):
            raise GraphError(f"{self.path} is not a drug checkpoint")
        if str(stored) != h.hexdigest():
            raise GraphError(f"checkpoint {self.path} is corrupted: checksum mismatch")
        self._refuse(problems)
        return {k: v for k, v in values.items() if k in self.wanted}, _step(values.get("meta/step"), self.path)

    def _members(self) -> dict[str, zipfile.ZipInfo]:
        """Members by key, after checking their names (nothing is read yet)."""
        members: dict[str, zipfile.ZipInfo] = {}
        for info in self.archive.infolist():
            key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if key in members:
                raise GraphError(f"checkpoint {self.path} holds member '{key}' twice")
            members[key] = info
        if "meta/format" not in members or "meta/sha256" not in members:
            raise GraphError(f"{self.path} is not a drug checkpoint")
        if self.optimizer is not None:
            _check_optimizer(self.optimizer, self.wanted, members, self.path)
        problems = []
        for key, info in members.items():
            if not info.filename.endswith(".npy") or not (key in META or key.startswith(tuple(KINDS))):
                problems.append(f"unexpected member '{key}'")
        if "meta/step" not in members:
            problems.append("meta/step is missing")
        problems += [f"missing {_kind(k)} '{_name(k)}'" for k in sorted(set(self.wanted) - set(members))]
        if self.exact:
            extra = set(members) - set(self.wanted) - set(META)
            problems += [f"unexpected {_kind(k)} '{_name(k)}'" for k in sorted(extra) if k.startswith(tuple(KINDS))]
        self._refuse(problems)
        return members

    def _check_sizes(self, members: dict[str, zipfile.ZipInfo]) -> None:
        """Refuse members that declare more bytes than the arrays they must fill, before inflating."""
        problems = []
        for key, info in members.items():
            if key in self.wanted:
                want = self.wanted[key]
                if info.file_size > want.nbytes + MAX_HEADER:
                    problems.append(
                        f"{_kind(key)} '{_name(key)}' takes {info.file_size} bytes in the file, more than "
                        f"{want.shape} {want.dtype} here"
                    )
            elif key in META and info.file_size > MAX_META_BYTES:
                problems.append(f"{key} takes {info.file_size} bytes")
        self._refuse(problems)

    def _member(self, key: str, info: zipfile.ZipInfo, h, problems: list[str]) -> np.ndarray | None:
        """A member's array (wanted and meta members), or None (others: only hashed); the header is
        checked before its data is read."""
        with self.archive.open(info) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"member '{key}' has .npy version {version}")
            if dtype.hasobject or fortran:
                raise ValueError(f"member '{key}' holds {'Python objects' if dtype.hasobject else 'Fortran order'}")
            nbytes = math.prod(shape) * dtype.itemsize
            if f.tell() + nbytes != info.file_size:
                raise ValueError(f"member '{key}' holds {info.file_size - f.tell()} bytes of data for {shape} {dtype}")
            if h is not None:
                h.update(_hash_prefix(key, dtype, shape))
            want = self.wanted.get(key)
            if want is not None and (want.shape != shape or want.dtype != dtype):
                here = f"{want.shape} {want.dtype}"
                problems.append(f"{_kind(key)} '{_name(key)}' is {shape} {dtype} in the file, {here} here")
                want = None
            if want is None and key not in META:
                _stream(f, nbytes, h)
                return None
            value = np.empty(shape, dtype)
            _fill(f, value)
            if h is not None:
                h.update(_bytes_of(value))
            if f.read(1):
                raise ValueError(f"member '{key}' holds more data than its header says")
            return value

    def _refuse(self, problems: list[str]) -> None:
        if problems:
            more = f"; and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
            listed = "; ".join(problems[:MAX_LISTED]) + more
            raise GraphError(f"checkpoint {self.path} does not fit this graph; nothing was loaded: {listed}")


def _state_roles(keys) -> set[str]:
    """What kinds of optimizer state members hold ("momentum", "magnitude", ...)."""
    return {k.rsplit("/", 1)[-1] for k in keys if k.startswith("state/") and k != f"state/{LR_KEY}"}


def _check_optimizer(optimizer: Any, wanted: Mapping[str, np.ndarray], members: Mapping, path) -> None:
    """A checkpoint of another optimizer (Adam's moments loaded into an SGD step) is refused
    with what differs, before the member-by-member comparison lists every key."""
    have, want = _state_roles(members), _state_roles(wanted)
    if have == want:
        return
    kept = ", ".join(sorted(have)) or "no state"
    needed = ", ".join(sorted(want)) or "no state"
    missing = ", ".join(sorted(want - have))
    extra = ", ".join(sorted(have - want))
    diff = "; ".join(p for p in (f"missing {missing}" if missing else "", f"extra {extra}" if extra else "") if p)
    raise GraphError(
        f"checkpoint {path} was saved by a step with another optimizer: the file holds optimizer state "
        f"{kept}, this step's {optimizer!r} keeps {needed} ({diff}); nothing was loaded. Compile with the "
        "optimizer the checkpoint was trained with, or load it into a predictor (parameters only)"
    )


def _kind(key: str) -> str:
    return next(kind for prefix, kind in KINDS.items() if key.startswith(prefix))


def _name(key: str) -> str:
    return key.split("/", 1)[1]


def _is_text(value: np.ndarray | None, length: int | None = None) -> bool:
    return (
        value is not None
        and value.dtype.kind == "U"
        and value.shape == ()
        and (length is None or len(str(value)) == length)
    )


def _step(value: np.ndarray | None, path) -> int:
    """meta/step: a non-negative int64 scalar, exactly as save() writes it."""
    if value is None or value.dtype != np.dtype("<i8") or value.shape != () or int(value) < 0:
        got = "nothing" if value is None else f"{value.shape} {value.dtype}"
        raise GraphError(f"checkpoint {path}: meta/step must be a non-negative int64 scalar, got {got}")
    return int(value)


def _bytes_of(value: np.ndarray) -> memoryview:
    """The array's bytes in C order, without a copy when it is already C-contiguous."""
    flat = np.ascontiguousarray(value).reshape(-1)
    return memoryview(flat.view(np.uint8)) if flat.size else memoryview(b"")


def _fill(f, value: np.ndarray) -> None:
    view = _bytes_of(value)
    at = 0
    while at < len(view):
        n = f.readinto(view[at : at + CHUNK])
        if not n:
            raise EOFError("the member ends early")
        at += n


def _stream(f, nbytes: int, h) -> None:
    """Hash `nbytes` of data without keeping them."""
    left = nbytes
    while left:
        chunk = f.read(min(left, CHUNK))
        if not chunk:
            raise EOFError("the member ends early")
        if h is not None:
            h.update(chunk)
        left -= len(chunk)
    if f.read(1):
        raise ValueError("a member holds more data than its header says")
