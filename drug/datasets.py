"""Datasets shipped with drug, read from their original formats (no network)."""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
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


PTB_SPLITS = ("train", "valid", "test")
PTB_EOS = "\n"  # the end-of-sentence symbol: one per line of the corpus


@dataclass(frozen=True)
class CharVocab:
    """Characters <-> int32 ids, in plain-text form: ' ' separates words (the files' `_`) and
    '\n' ends a sentence, so `decode` gives readable text and `encode(decode(ids))` is `ids`."""

    symbols: tuple[str, ...]  # symbol i has id i
    _ids: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(set(self.symbols)) != len(self.symbols) or any(len(s) != 1 for s in self.symbols):
            raise ValueError(f"vocabulary symbols must be distinct single characters, got {self.symbols!r}")
        object.__setattr__(self, "_ids", {s: i for i, s in enumerate(self.symbols)})

    def __len__(self) -> int:
        return len(self.symbols)

    @property
    def eos(self) -> int:
        """The id of the end-of-sentence symbol (a newline in decoded text)."""
        return self._ids[PTB_EOS]

    def encode(self, text: str) -> np.ndarray:
        """Ids of the characters of `text`; a character outside the vocabulary is an error."""
        try:
            return np.array([self._ids[c] for c in text], dtype=np.int32)
        except KeyError as error:
            at = text.index(error.args[0])
            raise ValueError(f"character {error.args[0]!r} at position {at} is not in the vocabulary") from None

    def decode(self, ids: Iterable[int]) -> str:
        """The text of `ids` (any iterable of ints, e.g. a 1-D array)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self)):
            raise ValueError(f"ids must lie in [0, {len(self)}), got values from {ids.min()} to {ids.max()}")
        return "".join(self.symbols[i] for i in ids.tolist())


def _ptb_path(split: str) -> Path:
    if split not in PTB_SPLITS:
        raise ValueError(f"Penn Treebank split must be one of {PTB_SPLITS}, got {split!r}")
    return DATA / "ptb" / f"ptb.char.{split}.txt.gz"


@lru_cache(maxsize=4)
def _ptb_symbols(path: Path) -> np.ndarray:
    """The corpus as plain-text bytes, one per symbol: the files write every character as a
    single-character token between spaces, `_` between words and a newline after each sentence."""
    raw = np.frombuffer(gzip.decompress(_verified_bytes(path)), np.uint8)
    where = np.flatnonzero(raw != ord(" "))
    if where.size > 1 and np.diff(where).min() < 2:
        at = int(where[np.argmin(np.diff(where))])
        raise ValueError(f"{path}: a token longer than one character at byte {at}; not the ptb.char format")
    symbols = raw[where].copy()
    symbols[symbols == ord("_")] = ord(" ")
    symbols.flags.writeable = False
    return symbols


@lru_cache(maxsize=1)
def ptb_vocab() -> CharVocab:
    """The 50-symbol vocabulary of the training split, sorted by character code ('\n', ' ', ...)."""
    return CharVocab(tuple(chr(c) for c in np.unique(_ptb_symbols(_ptb_path("train")))))


def ptb_chars(split: str = "train") -> np.ndarray:
    """Penn Treebank characters (Mikolov's ptb.char files) as int32 ids of `ptb_vocab()`, one
    array for the whole split: 5,017,482 train, 393,042 valid and 442,423 test symbols."""
    symbols = _ptb_symbols(_ptb_path(split))
    vocab = ptb_vocab()
    table = np.full(256, -1, np.int32)
    table[[ord(s) for s in vocab.symbols]] = np.arange(len(vocab), dtype=np.int32)
    ids = table[symbols]
    if (ids < 0).any():
        missing = sorted({chr(c) for c in symbols[ids < 0]})
        raise ValueError(f"Penn Treebank {split}: characters {missing} are not in the training vocabulary")
    return ids
