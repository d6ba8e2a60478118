"""Datasets shipped with drug, read from their original formats (no network)."""

from __future__ import annotations

import gzip
import hashlib
from functools import lru_cache
from pathlib import Path

import numpy as np

DATA = Path(__file__).parent / "data"
_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def _verified_bytes(path: Path) -> bytes:
    """The file's bytes, after checking them against the SHA256SUMS beside it."""
    sums = dict(line.split()[::-1] for line in (path.parent / "SHA256SUMS").read_text().splitlines() if line)
    raw = path.read_bytes()
    if hashlib.sha256(raw).hexdigest() != sums.get(path.name):
        raise OSError(f"{path} does not match its SHA256SUMS entry: the data file is damaged")
    return raw


def read_idx(raw: bytes) -> np.ndarray:
    """Decode an IDX file (big-endian header: magic with dtype code and rank, then dims)."""
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError("not an unsigned-byte IDX file")
    rank = raw[3]
    dims = np.frombuffer(raw, ">i4", count=rank, offset=4)
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * rank)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"IDX payload has {data.size} bytes, header says {tuple(dims)}")
    return data.reshape(tuple(int(d) for d in dims))


@lru_cache(maxsize=2)
def _mnist_raw(split: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = (read_idx(gzip.decompress(_verified_bytes(DATA / "mnist" / f))) for f in _MNIST_FILES[split])
    return images, labels


def mnist(split: str = "train", flatten: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """MNIST images as float32 in [0, 1] ((N, 784), or (N, 1, 28, 28) unflattened) and int32 labels."""
    if split not in _MNIST_FILES:
        raise ValueError(f"MNIST split must be 'train' or 'test', got {split!r}")
    images, labels = _mnist_raw(split)
    x = images.astype(np.float32) / 255.0
    x = x.reshape(len(x), -1) if flatten else x.reshape(len(x), 1, 28, 28)
    return x, labels.astype(np.int32)
