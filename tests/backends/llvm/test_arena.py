"""Arena packing (backends/llvm/arena.py): temps alive at the same time never share memory, temps
whose lifetimes are disjoint do, offsets are 64-byte aligned, and the arena is no larger than
one aligned slot per buffer and never smaller than what is alive at the busiest kernel."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from drug.backends.llvm import arena
from drug.compiler.schedule import Buffer


def temp(slot: int, elements: int, live: tuple[int, int], batch_dim: bool = False) -> Buffer:
    shape = (None, elements) if batch_dim else (elements,)
    return Buffer(slot, shape, np.dtype("float32"), "temp", live=live)


def test_disjoint_lifetimes_share_memory_and_overlapping_ones_do_not():
    a, b, c = temp(0, 256, (0, 1)), temp(1, 256, (2, 3)), temp(2, 256, (1, 2))
    offsets, size = arena.pack([a, b, c], batch=1)
    assert offsets[0] == offsets[1]  # a and b are never alive together
    assert abs(offsets[2] - offsets[0]) >= 1024  # c overlaps both
    assert size == 2048


def test_other_kinds_take_no_arena_memory_and_batch_sized_temps_scale():
    param = Buffer(0, (4, 4), np.dtype("float32"), "param", "w")
    batched = temp(1, 10, (0, 0), batch_dim=True)
    offsets, size = arena.pack([param, batched], batch=32)
    assert 0 not in offsets and offsets[1] == 0
    assert size == 32 * 10 * 4 == batched.nbytes(32)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 300), st.integers(0, 9), st.integers(0, 4), st.booleans()), min_size=1, max_size=25
    ),
    st.integers(0, 17),
)
def test_packing_is_safe_aligned_and_not_larger_than_needed(specs, batch):
    buffers = [temp(i, n, (first, first + length), batched) for i, (n, first, length, batched) in enumerate(specs)]
    offsets, size = arena.pack(buffers, batch)
    for a in buffers:
        assert offsets[a.slot] % arena.ALIGN == 0
        assert offsets[a.slot] + a.nbytes(batch) <= size
        for b in buffers:
            overlap_in_time = not (a.live[1] < b.live[0] or b.live[1] < a.live[0])
            if a.slot < b.slot and overlap_in_time and a.nbytes(batch) and b.nbytes(batch):
                a_start, b_start = offsets[a.slot], offsets[b.slot]
                assert a_start + a.nbytes(batch) <= b_start or b_start + b.nbytes(batch) <= a_start
    # never more than one aligned slot per buffer, never less than the busiest kernel's live bytes
    aligned = [-(-max(b.nbytes(batch), 1) // arena.ALIGN) * arena.ALIGN for b in buffers]
    assert size <= sum(aligned)
    busiest = max(sum(b.nbytes(batch) for b in buffers if b.live[0] <= k <= b.live[1]) for k in range(0, 14))
    assert size >= busiest


def first_fit(buffers: list[Buffer], batch: int) -> tuple[dict[int, int], int]:
    """The packing rule spelled out as a plain loop: largest first, each at the lowest offset
    below the first range of a buffer alive at the same time that leaves room."""
    placed: list[tuple[int, int, Buffer]] = []
    offsets = {}
    for buffer in sorted(buffers, key=lambda b: (-b.nbytes(batch), b.slot)):
        size = -(-max(buffer.nbytes(batch), 1) // arena.ALIGN) * arena.ALIGN
        first, last = buffer.live
        alive = [(o, s) for o, s, other in placed if other.live[1] >= first and last >= other.live[0]]
        busy = sorted((o, o + s) for o, s in alive)
        offset = 0
        for start, end in busy:
            if offset + size <= start:
                break
            offset = max(offset, end)
        placed.append((offset, size, buffer))
        offsets[buffer.slot] = offset
    return offsets, max((o + s for o, s, _ in placed), default=0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 300), st.integers(0, 30), st.integers(0, 6)), max_size=60))
def test_packing_places_every_buffer_where_the_plain_first_fit_loop_does(specs):
    buffers = [temp(i, n, (first, first + length)) for i, (n, first, length) in enumerate(specs)]
    assert arena.pack(buffers, batch=3) == first_fit(buffers, batch=3)
