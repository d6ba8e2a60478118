"""The kernel graph fusion merges in (compiler/kernel_graph.py): its convexity test and its
merges checked against networkx on random DAGs, the topological order it keeps valid through
every merge, and its lexicographic order against networkx's."""

from __future__ import annotations

import random

import networkx as nx
import pytest

from drug.compiler.kernel_graph import KernelGraph, lexicographic_topological_order


def random_dag(rng: random.Random) -> tuple[KernelGraph, nx.DiGraph]:
    count = rng.randint(2, 16)
    graph, reference = KernelGraph(count), nx.DiGraph()
    reference.add_nodes_from(range(count))
    for _ in range(rng.randint(1, 30)):
        u, v = sorted(rng.sample(range(count), 2))
        graph.add_edge(u, v)
        reference.add_edge(u, v)
    return graph, reference


@pytest.mark.parametrize("seed", range(8))
def test_merges_agree_with_networkx_and_keep_an_order_every_edge_follows(seed):
    rng = random.Random(seed)
    for _ in range(300):
        graph, reference = random_dag(rng)
        for _ in range(14):
            edges = graph.edges()
            if not edges:
                break
            u, v = rng.choice(edges)
            reference.remove_edge(u, v)
            convex = not nx.has_path(reference, u, v)
            reference.add_edge(u, v)
            assert graph.only_path(u, v) == convex
            if not convex:
                continue
            graph.contract(u, v)
            reference = nx.contracted_nodes(reference, u, v, self_loops=False)
            assert sorted(graph.edges()) == sorted(reference.edges())
            assert all(graph._pos[a] < graph._pos[b] for a, b in graph.edges())
        key = lambda k: (k * 7919) % 101  # noqa: E731 - distinct keys, unrelated to the numbering
        assert graph.lexicographic_order(key) == list(nx.lexicographical_topological_sort(reference, key=key))


def test_a_merge_that_would_make_a_cycle_is_refused():
    graph = KernelGraph(3)
    for u, v in [(0, 1), (1, 2), (0, 2)]:
        graph.add_edge(u, v)
    assert not graph.only_path(0, 2)
    with pytest.raises(AssertionError, match="cycle"):
        graph.contract(0, 2)


def test_a_cyclic_graph_has_no_topological_order():
    assert lexicographic_topological_order({0: {1}, 1: {2}, 2: {0}}, key=int) is None
    assert lexicographic_topological_order({0: {2}, 1: {2}, 2: set()}, key=lambda k: -k) == [1, 0, 2]
