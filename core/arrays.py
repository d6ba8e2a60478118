"""Named host arrays whose newest values may live in a device's memory.

Parameters and optimizer state are NumPy arrays that host backends read and write in place. A
device backend (OpenCL) keeps its own copies and updates those instead, so the host copy can be
behind. This mapping records where the newest value of each array is: reading an array through
it brings the newest value back first, and since the reader may then write the array, devices
drop their copies (they upload the array again before their next step)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Protocol

import numpy as np


class DeviceCopies(Protocol):
    """A backend's memory holding copies of some host arrays (an OpenCL device's buffers)."""

    def download(self, key: str, out: np.ndarray) -> None:
        """Copy its value of `key` into the host array `out`."""
        ...

    def drop(self, key: str) -> None:
        """Its copy of `key` is outdated (the host or another device wrote it): upload before use."""
        ...


class HostArrays(Mapping[str, np.ndarray]):
    """Arrays by name; the array objects are never replaced, so views of them stay valid (though
    on a device backend a view taken before a step shows the value from before that step)."""

    def __init__(self, arrays: Mapping[str, np.ndarray] | None = None) -> None:
        self._arrays: dict[str, np.ndarray] = dict(arrays or {})
        self._newest: dict[str, DeviceCopies] = {}  # key -> the device whose copy is newer than the host's
        self._copies: dict[str, list[DeviceCopies]] = {}  # key -> devices holding a current copy

    def __getitem__(self, key: str) -> np.ndarray:
        """The host array with its newest value; the caller may write it, so device copies are dropped."""
        array = self.current(key)
        self.written_on_host([key])
        return array

    def __iter__(self) -> Iterator[str]:
        return iter(self._arrays)

    def __len__(self) -> int:
        return len(self._arrays)

    def _add(self, key: str, value: np.ndarray) -> None:
        self._arrays[key] = value

    def _missing(self, key: str) -> KeyError:
        return KeyError(key)

    def storage(self, key: str) -> np.ndarray:
        """The host array itself, whatever its freshness: for identity and overlap checks."""
        try:
            return self._arrays[key]
        except KeyError:
            raise self._missing(key) from None

    def current(self, key: str) -> np.ndarray:
        """The host array holding the newest value, for reading (device copies stay valid)."""
        array = self.storage(key)
        device = self._newest.pop(key, None)
        if device is not None:
            device.download(key, array)
        return array

    def refresh(self, keys: Iterable[str]) -> None:
        """Bring the newest values of `keys` to the host arrays (before a host backend reads them)."""
        if self._newest:
            for key in keys:
                self.current(key)

    def written_on_host(self, keys: Iterable[str]) -> None:
        """The host arrays of `keys` hold their newest values: device copies are outdated."""
        if self._copies or self._newest:
            for key in keys:
                self._newest.pop(key, None)
                for device in self._copies.pop(key, ()):
                    device.drop(key)

    def copied_to(self, device: DeviceCopies, key: str) -> None:
        """`device` now holds a current copy of `key` (it uploaded the host array)."""
        holders = self._copies.setdefault(key, [])
        if not any(h is device for h in holders):
            holders.append(device)

    def written_on_device(self, device: DeviceCopies, keys: Iterable[str]) -> None:
        """`device` wrote new values of `keys`: the host arrays and other devices' copies are behind."""
        for key in keys:
            for other in self._copies.get(key, ()):
                if other is not device:
                    other.drop(key)
            self._copies[key] = [device]
            self._newest[key] = device
