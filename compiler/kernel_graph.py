"""The graph of kernels that fusion merges: adjacency sets plus a topological order kept valid
through every merge, so that the convexity test before a merge only searches the kernels
ordered between the two (a path from one kernel to another passes only through kernels
ordered between them), not everything downstream of the producer."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable


class KernelGraph:
    """Kernels 0..n-1 (given in a topological order) joined by producer -> consumer edges."""

    def __init__(self, count: int):
        self.succ: dict[int, set[int]] = {k: set() for k in range(count)}
        self.pred: dict[int, set[int]] = {k: set() for k in range(count)}
        self._order: list[int | None] = list(range(count))  # None: the slot of a merged kernel
        self._pos: dict[int, int] = {k: k for k in range(count)}
        self._checked: tuple[int, int, tuple[str, set[int]] | None] = (-1, -1, None)

    def add_edge(self, u: int, v: int) -> None:
        """An edge from `u` to `v`, which the order given at construction must already put after `u`."""
        self.succ[u].add(v)
        self.pred[v].add(u)

    def edges(self) -> list[tuple[int, int]]:
        return [(u, v) for u, vs in self.succ.items() for v in vs]

    def only_path(self, producer: int, consumer: int) -> bool:
        """Whether the edge `producer` -> `consumer` is the only path between the two: then
        merging them keeps the graph acyclic (the merged kernel is convex)."""
        self._checked = (producer, consumer, self._between(producer, consumer))
        return self._checked[2] is not None

    def contract(self, keep: int, gone: int) -> None:
        """Merge kernel `gone` into `keep` along the edge `keep` -> `gone`, the only path
        between them. Between their places in the order, either what `keep` reaches moves after
        the merged kernel, or what reaches `gone` moves before it (whichever was found)."""
        checked = self._checked
        found = checked[2] if checked[:2] == (keep, gone) else self._between(keep, gone)
        self._checked = (-1, -1, None)
        if found is None:
            raise AssertionError(f"merging kernels {keep} and {gone} would make a cycle")
        side, region = found
        for p in self.pred.pop(gone):
            self.succ[p].discard(gone)
            if p != keep:
                self.succ[p].add(keep)
                self.pred[keep].add(p)
        for c in self.succ.pop(gone):
            self.pred[c].discard(gone)
            self.succ[keep].add(c)
            self.pred[c].add(keep)
        start, end = self._pos[keep], self._pos.pop(gone)
        window = self._order[start : end + 1]
        stay = [k for k in window if k is not None and k != keep and k != gone and k not in region]
        moved = [k for k in window if k in region]
        empty = [None] * (len(window) - len(stay) - len(moved) - 1)  # merged kernels' slots, `gone`'s too
        if side == "after":
            self._order[start : end + 1] = [*empty, *stay, keep, *moved]
        else:
            self._order[start : end + 1] = [*moved, keep, *stay, *empty]
        for offset, k in enumerate(self._order[start : end + 1]):
            if k is not None:
                self._pos[k] = start + offset

    def _between(self, u: int, v: int) -> tuple[str, set[int]] | None:
        """None if a path other than the edge `u` -> `v` leads from `u` to `v`. Otherwise one
        side of the kernels ordered between them, closed under edges inside that span: ("after",
        what `u` reaches) or ("before", what reaches `v`). Both searches advance in turns and the
        first to finish answers."""
        lo, hi = self._pos[u], self._pos[v]
        pos, succ, pred = self._pos, self.succ, self.pred
        ahead: set[int] = set()
        behind: set[int] = set()
        forward = [k for k in succ[u] if k != v]
        backward = [k for k in pred[v] if k != u]
        while forward and backward:
            k = forward.pop()
            if k not in ahead and pos[k] <= hi:
                if k == v or k in behind:
                    return None
                ahead.add(k)
                forward.extend(succ[k])
            k = backward.pop()
            if k not in behind and pos[k] >= lo:
                if k == u or k in ahead:
                    return None
                behind.add(k)
                backward.extend(pred[k])
        if not forward:
            # `ahead` is complete; anything popped from `backward` so far is not reached by u
            return "after", ahead
        return "before", behind

    def lexicographic_order(self, key: Callable[[int], object]) -> list[int]:
        order = lexicographic_topological_order(self.succ, key)
        assert order is not None, "fusion made a cycle"
        return order


def lexicographic_topological_order(succ: dict[int, Iterable[int]], key: Callable[[int], object]) -> list[int] | None:
    """The topological order of the graph `succ` (node -> successors, every node a key) that
    always takes the ready node of the smallest `key` first (keys must be distinct); None if the
    graph has a cycle."""
    indegree = dict.fromkeys(succ, 0)
    for targets in succ.values():
        for t in targets:
            indegree[t] += 1
    ready = [(key(k), k) for k, d in indegree.items() if d == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        _, k = heapq.heappop(ready)
        order.append(k)
        for t in succ[k]:
            indegree[t] -= 1
            if indegree[t] == 0:
                heapq.heappush(ready, (key(t), t))
    return order if len(order) == len(indegree) else None
