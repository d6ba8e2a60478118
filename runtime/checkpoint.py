"""Checkpoints: parameters, state buffers, optimizer state and step count in one .npz, written
atomically and checked by a SHA-256 so that a torn or corrupted file is never loaded."""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
import tokenize
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..core.errors import GraphError

FORMAT = "drug-checkpoint-1"


def _digest(arrays: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in sorted(arrays):
        value = np.ascontiguousarray(arrays[key])
        h.update(f"{key}|{value.dtype.str}|{value.shape}|".encode())
        h.update(value.tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class Checkpoint:
    params: dict[str, np.ndarray]
    state: dict[str, np.ndarray]  # optimizer state, by key
    buffers: dict[str, np.ndarray]  # the graph's state buffers (batch-norm statistics, RNG counter)
    step: int


def save(
    path: str | os.PathLike,
    params: Mapping[str, np.ndarray],
    state: Mapping[str, np.ndarray],
    step: int,
    buffers: Mapping[str, np.ndarray] | None = None,
) -> None:
    arrays = {f"param/{k}": v for k, v in params.items()}
    arrays |= {f"state/{k}": v for k, v in state.items()}
    arrays |= {f"buffer/{k}": v for k, v in (buffers or {}).items()}
    arrays["meta/step"] = np.asarray(step, np.int64)
    arrays["meta/format"] = np.asarray(FORMAT)
    arrays["meta/sha256"] = np.asarray(_digest(arrays))
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read(path: str | os.PathLike) -> Checkpoint:
    """A checkpoint's contents, after checking its integrity; FileNotFoundError if there is no
    file at `path`."""
    if not os.path.isfile(path):
        raise FileNotFoundError(errno.ENOENT, "no checkpoint file", os.fspath(path))
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    # RuntimeError (NotImplementedError too): a damaged zip directory claiming encryption,
    # an unknown compression method or a newer zip version; MemoryError: a .npy header claiming a
    # huge shape; TokenError, SyntaxError, TypeError: a mangled .npy header dictionary
    except (
        OSError, ValueError, RuntimeError, zipfile.BadZipFile, EOFError,
        MemoryError, tokenize.TokenError, SyntaxError, TypeError,
    ) as error:  # fmt: skip
        raise GraphError(f"checkpoint {path} is unreadable or truncated: {error}") from None
    stored = arrays.pop("meta/sha256", None)
    if stored is None or str(arrays.get("meta/format")) != FORMAT:
        raise GraphError(f"{path} is not a drug checkpoint")
    if str(stored) != _digest(arrays):
        raise GraphError(f"checkpoint {path} is corrupted: checksum mismatch")

    def part(prefix: str) -> dict[str, np.ndarray]:
        return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}

    return Checkpoint(part("param/"), part("state/"), part("buffer/"), int(arrays["meta/step"]))


def check_compatible(kind: str, current: Mapping[str, np.ndarray], loaded: Mapping[str, np.ndarray], path) -> None:
    """Raise, naming every difference, unless names, shapes and dtypes all match."""
    problems = [f"missing {kind} '{k}'" for k in sorted(set(current) - set(loaded))]
    problems += [f"unexpected {kind} '{k}'" for k in sorted(set(loaded) - set(current))]
    for k in sorted(set(current) & set(loaded)):
        a, b = current[k], loaded[k]
        if a.shape != b.shape or a.dtype != b.dtype:
            problems.append(f"{kind} '{k}' is {b.shape} {b.dtype} in the file, {a.shape} {a.dtype} here")
    if problems:
        raise GraphError(f"checkpoint {path} does not fit this graph; nothing was loaded: " + "; ".join(problems))
