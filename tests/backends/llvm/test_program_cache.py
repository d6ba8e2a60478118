"""Finished programs in the compile cache (backends/llvm/programs.py, compiler/portable.py): a
request compiled before skips every pass and trains exactly as a fresh compile does; any change
to the graph, its shapes and dtypes, the optimizer or the mode is a miss; a damaged, truncated or
foreign entry is compiled again, never run; programs of users' own ops are never stored; and the
arena layout stored beside them is checked the same way."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import drug as dg
from drug.backends.llvm import arena, jit
from drug.compiler import build, portable
from drug.core.pages import ALIGN

RNG = np.random.default_rng(0)
X = RNG.standard_normal((8, 6)).astype(np.float32)
Y = RNG.integers(0, 3, 8).astype(np.int32)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DRUG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("DRUG_CACHE", "1")
    monkeypatch.delenv("DRUG_DEBUG", raising=False)
    return tmp_path / "cache"


@pytest.fixture
def passes_run(monkeypatch) -> list[int]:
    """Counts the compiles that ran the pass pipeline."""
    runs: list[int] = []
    real = build.run_pipeline

    def counting(program, pipeline):
        runs.append(1)
        return real(program, pipeline)

    monkeypatch.setattr(build, "run_pipeline", counting)
    return runs


def model(hidden: int = 5, dtype: str = "float32", named: str = "fc1"):
    """A small classifier with a composite layer, dropout (the graph's random counter) and batch
    norm (state buffers the steps update)."""
    g = dg.Graph(seed=0, dtype=dtype)
    x = g.input("x", (None, 6))
    y = g.input("y", (None,), dtype="int32")
    h = dg.layers.Dense(hidden, activation="tanh", name=named)(x)
    h = dg.dropout(h, 0.25)
    h = dg.reshape(h, (None, hidden, 1, 1))
    h = dg.layers.BatchNorm(name="bn")(h)
    logits = dg.layers.Dense(3, name="out")(dg.reshape(h, (None, hidden)))
    return g, dg.softmax_cross_entropy(logits, y), logits


def train(optimizer=None, steps: int = 3, **model_args):
    g, loss, _ = model(**model_args)
    step = g.compile(loss=loss, optimizer=optimizer or dg.Adam(lr=1e-2))
    losses = [step(x=X.astype(g.dtype), y=Y) for _ in range(steps)]
    return step, losses, {name: g.params[name].copy() for name in g.params}, dict(g.state)


def entries(cache, suffix: str = ".program") -> list:
    return sorted(cache.glob(f"*{suffix}"))


def test_a_request_seen_before_skips_the_passes_and_trains_the_same(cache, passes_run):
    first, losses, params, state = train()
    assert len(passes_run) == 1 and len(entries(cache)) == 1
    again, losses_again, params_again, state_again = train()
    assert len(passes_run) == 1, "the second compile ran the passes"
    assert losses_again == losses
    for name in params:
        np.testing.assert_array_equal(params_again[name], params[name])
    for name in state:
        np.testing.assert_array_equal(state_again[name], state[name])
    assert again._executor.compiled.from_cache
    assert [n.op.name for n in again.program.nodes] == [n.op.name for n in first.program.nodes]
    ids = [n.id for n in again.program.nodes]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), "loaded nodes keep a topological order of ids"


def test_a_loaded_program_reads_the_graphs_own_constants(cache, passes_run):
    """A stored program refers to the request's constant arrays instead of holding copies: the
    loaded one reads the array the graph placed (on a cache line, huge pages when large), and the
    entry does not carry the value."""
    weights = RNG.standard_normal((512, 600)).astype(np.float32)  # 1.2 MB: over the huge-page size

    def predictor():
        g = dg.Graph(seed=0)
        x = g.input("x", (None, 512))
        w = g.constant(weights)
        return g.compile(outputs=dg.relu(x @ w)), w

    first, _ = predictor()
    again, constant = predictor()
    assert len(passes_run) == 1 and again._executor.compiled.from_cache
    assert entries(cache)[0].stat().st_size < weights.nbytes / 10
    slot = again._executor.schedule.buffer_of[constant.id]
    held = again._executor.schedule.buffers[slot].key
    assert held is constant.op.value and held.ctypes.data % ALIGN == 0
    x = RNG.standard_normal((3, 512)).astype(np.float32)
    np.testing.assert_allclose(again(x=x), np.maximum(x @ weights, 0), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(again(x=x), first(x=x))


def test_a_loaded_program_names_gradients_after_this_graphs_nodes(cache, passes_run):
    first = train()[0]
    again = train()[0]
    assert len(passes_run) == 1
    first_calls = sorted({n.call.name for n in first.program.nodes if n.call is not None and "gradient" in n.call.name})
    again_calls = sorted({n.call.name for n in again.program.nodes if n.call is not None and "gradient" in n.call.name})
    assert len(again_calls) == len(first_calls) > 0
    # every name that shows a node of the first program shows this program's own node instead (a
    # node a later pass replaced, like the forward nodes after a fused matmul_bias, keeps its number)
    first_labels = {n.label for n in first.program.nodes} | {n.label for n in first.program.graph.nodes()}
    labels = {n.label for n in again.program.nodes} | {n.label for n in again.program.graph.nodes()}
    named = [name.removeprefix("gradient of ") for name in again_calls if "#" in name]
    assert named and all(name in labels or name not in first_labels for name in named)
    assert any(name in labels for name in named)


@pytest.mark.parametrize(
    "change",
    [
        {"hidden": 4},
        {"dtype": "float64"},
        {"named": "first"},
        {"optimizer": dg.Adam(lr=2e-2)},
        {"optimizer": dg.SGD(lr=1e-2, momentum=0.9)},
    ],
    ids=["shape", "dtype", "layer name", "learning rate", "optimizer"],
)
def test_a_changed_graph_or_option_misses(cache, passes_run, change):
    train(steps=1)
    train(steps=1, **change)
    assert len(passes_run) == 2
    assert len(entries(cache)) == 2


def test_inference_and_training_of_one_graph_are_different_entries(cache, passes_run):
    g, loss, logits = model()
    g.compile(loss=loss, optimizer=dg.Adam(lr=1e-2))
    g.compile(outputs=logits)
    g.compile(outputs=logits, training=True)
    assert len(passes_run) == 3 and len(entries(cache)) == 3
    g2, _, logits2 = model()
    predict = g2.compile(outputs=logits2)
    assert len(passes_run) == 3
    np.testing.assert_allclose(predict(x=X), g.compile(outputs=logits)(x=X), rtol=1e-6)


@pytest.mark.parametrize("damage", ["truncate", "garbage with a good hash", "another entry's bytes"])
def test_a_damaged_entry_is_compiled_again(cache, passes_run, damage):
    _, losses, _, _ = train()
    (entry,) = entries(cache)
    data = entry.read_bytes()
    if damage == "truncate":
        entry.write_bytes(data[: len(data) // 2])
    elif damage == "garbage with a good hash":
        jit.write_verified(entry, data[:100] + b"\x00" * 64 + data[164:])
    else:
        jit.write_verified(entry, portable.FORMAT + b"\xff" * 40)
    _, again, _, _ = train()
    assert len(passes_run) == 2 and again == losses
    _, third, _, _ = train()
    assert len(passes_run) == 2 and third == losses, "the entry was stored again"


def test_no_entry_without_the_cache_or_under_debug_output(cache, passes_run, monkeypatch, capsys):
    monkeypatch.setenv("DRUG_CACHE", "0")
    train(steps=1)
    train(steps=1)
    assert len(passes_run) == 2 and not cache.exists()
    monkeypatch.setenv("DRUG_CACHE", "1")
    train(steps=1)
    monkeypatch.setenv("DRUG_DEBUG", "1")
    train(steps=1)
    assert len(passes_run) == 4, "DRUG_DEBUG prints the passes' programs: they run"
    assert "== after fuse" in capsys.readouterr().err


class Twice(dg.Op):
    """A user's own op: its code is not drug's, so no key covers it."""

    name = "twice"

    def infer(self, x):
        return x

    def ref(self, x):
        return 2 * x

    def grad(self, g, out, x):
        return [g * 2.0]


def test_programs_with_a_users_op_are_not_stored(cache, passes_run):
    for _ in range(2):
        g = dg.Graph()
        x = g.input("x", (None, 3))
        fn = g.compile(outputs=Twice()(x) + 1.0)
        np.testing.assert_allclose(fn(x=np.ones((2, 3), np.float32)), 3.0)
    assert len(passes_run) == 2 and not entries(cache)


def test_a_damaged_arena_layout_is_packed_again(cache):
    step, losses, _, _ = train()
    (layout,) = entries(cache, arena.SUFFIX)
    offsets, size = arena.pack(step._executor.schedule.buffers, len(X))
    stored = np.frombuffer(layout.read_bytes(), "<i8")
    assert stored[-1] == size and sorted(stored[:-1]) == sorted(offsets.values())
    jit.write_verified(layout, np.full(len(stored), 3, "<i8").tobytes())  # misaligned, overlapping
    _, again, _, _ = train()
    assert again == losses
    assert np.frombuffer(layout.read_bytes(), "<i8")[-1] == size


def test_a_layout_is_never_shared_by_buffers_alive_longer(cache):
    """Two programs with the same kernels but different outputs keep different temps alive to the
    end: each gets a layout in which no two buffers alive at once overlap, read from the cache or not."""
    from drug.compiler.schedule import Buffer

    def overlapping(buffers, offsets):
        temps = [b for b in buffers if b.kind == "temp"]
        return [
            (a.slot, b.slot)
            for i, a in enumerate(temps)
            for b in temps[i + 1 :]
            if a.live[0] <= b.live[1] and b.live[0] <= a.live[1]
            and offsets[a.slot] < offsets[b.slot] + b.nbytes(2) and offsets[b.slot] < offsets[a.slot] + a.nbytes(2)
        ]  # fmt: skip

    short = [Buffer(0, (None, 8), np.dtype("float64"), "temp", live=(0, 1)),
             Buffer(1, (None, 8), np.dtype("float64"), "temp", live=(2, 3))]  # fmt: skip
    long = [Buffer(0, (None, 8), np.dtype("float64"), "temp", live=(0, 3)), short[1]]
    for buffers in (short, long, short, long):
        offsets, _ = arena.layout(buffers, 2)
        assert not overlapping(buffers, offsets)

    g = dg.Graph(dtype="float64")
    x = g.input("x", (None, 4))
    h = x @ g.parameter("w", (4, 4))
    z = dg.relu(h) @ g.parameter("v", (4, 2))
    feed = np.random.default_rng(0).standard_normal((3, 4))
    for outputs in ([z], [z, h], [z]):
        got = g.compile(outputs=outputs)(x=feed)
        want = g.compile(outputs=outputs, backend="numpy")(x=feed)
        for a, b in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
            np.testing.assert_allclose(a, b, rtol=1e-12)


@given(
    st.lists(st.sampled_from(["relu", "#", "12", "7", "x", "@", "_", "²", "٣"]), max_size=8).map("".join),
    st.dictionaries(st.integers(0, 20), st.integers(0, 20)),
)
@settings(max_examples=300, deadline=None)
def test_canonical_labels_match_the_general_rule(label, local):
    """A request's labels lose their node ids by a fast path for `<op>#<id>` and the regex for the
    rest; both must give what the regex alone gives."""
    expected = portable.NODE_ID.sub(lambda m: f"#@{local[int(m[1])]}" if int(m[1]) in local else m[0], label)
    assert portable._canonical(label, local) == expected
