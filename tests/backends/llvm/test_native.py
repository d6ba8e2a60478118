"""The native (llvm) backend against the NumPy reference: whole train steps, fusion, batch
binding, compile cache, callbacks, generated code.

Float32 tolerances: fused loops contract a*b+c into FMAs and reassociate sums, and BLAS sums
in its own order, so each value may differ from NumPy's in the last bits (~1e-7 relative per
operation). A few dozen chained operations stay far below rtol 1e-4; training curves
amplify the differences slowly (chaotic dynamics), so 50 steps are compared at 1e-3."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import EXAMPLES
from hypothesis import given, settings
from hypothesis import strategies as st
from llvmlite import ir

import drug as dg
from drug.backends.llvm import bounds, irutil, threads
from drug.datasets import mnist

sys.path.insert(0, str(EXAMPLES))
from mnist_dense import build  # noqa: E402

OPTIMIZERS = {
    "sgd": lambda: dg.SGD(0.1),
    "momentum": lambda: dg.SGD(0.05, momentum=0.9),
    "rmsprop": lambda: dg.RMSProp(1e-3),
    "adam": lambda: dg.Adam(1e-3),
    "adam_no_momentum": lambda: dg.Adam(1e-3, beta_momentum=0.0),
    # without the magnitude average a step is m / (|g| + eps): when the current gradient is ~0
    # but the momentum is not, steps reach lr * |m| / eps (weights of -358 with eps=1e-8), and
    # rounding is amplified by 1/eps; a larger eps keeps this comparison well-conditioned
    "adam_no_magnitude": lambda: dg.Adam(1e-3, beta_magnitude=0.0, epsilon=1e-3),
}


@pytest.fixture(scope="module")
def data():
    x, y = mnist("train")
    return x[:2048], y[:2048]


def twin_graphs(hidden=(64,), seed=0):
    return [build(list(hidden), seed) for _ in range(2)]


def mlp64(seed=0):
    """A float64 MLP. Float64 because adaptive steps g / (sqrt(v) + eps) amplify rounding in
    near-zero gradients by up to 1/eps: in float32 two correct implementations differ there."""
    g = dg.Graph(seed=seed, dtype="float64")
    x, y = g.input("x", (None, 784)), g.input("y", (None,), dtype="int32")
    h = dg.tanh(x @ g.parameter("w1", (784, 32)) + g.parameter("b1", (32,), init="normal"))
    return g, dg.softmax_cross_entropy(h @ g.parameter("w2", (32, 10)), y)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_train_step_matches_reference(name, data):
    x, y = data
    (g1, loss1), (g2, loss2) = mlp64(), mlp64()
    ref = g1.compile(loss=loss1, optimizer=OPTIMIZERS[name](), backend="numpy")
    nat = g2.compile(loss=loss2, optimizer=OPTIMIZERS[name](), backend="llvm")
    for i in range(5):
        batch = dict(x=x[i * 32 : (i + 1) * 32].astype(np.float64), y=y[i * 32 : (i + 1) * 32])
        assert nat(**batch) == pytest.approx(ref(**batch), rel=1e-10)
    for key in g1.params:
        np.testing.assert_allclose(g2.params[key], g1.params[key], rtol=1e-9, atol=1e-12)
    assert ref.state.keys() == nat.state.keys()
    for key in ref.state:
        np.testing.assert_allclose(nat.state[key], ref.state[key], rtol=1e-9, atol=1e-14)


def test_mlp_loss_curve_follows_reference(data):
    x, y = data
    (g1, _, loss1), (g2, _, loss2) = twin_graphs(hidden=(128, 64))
    ref = g1.compile(loss=loss1, optimizer=dg.Adam(1e-3), backend="numpy")
    nat = g2.compile(loss=loss2, optimizer=dg.Adam(1e-3), backend="llvm")
    curves = np.array(
        [[f(x=x[i : i + 64], y=y[i : i + 64]) for f in (ref, nat)] for i in range(0, 64 * 50, 64) if i < len(x)]
    )
    np.testing.assert_allclose(curves[:, 1], curves[:, 0], rtol=1e-3)
    assert curves[-5:, 1].mean() < 0.5 * curves[:5, 1].mean()


def test_fusion_reduces_kernel_count():
    g, _, loss = build([512, 256], 0)
    train = g.compile(loss=loss, optimizer=dg.Adam(1e-3), backend="llvm")
    elementwise = [n for n in train.program.nodes if isinstance(n.op, dg.ops.Elementwise)]
    loops = [k for k in train.program.schedule.kernels if k.kind == "loop"]
    assert not [k for k in train.program.schedule.kernels if k.kind == "callback"]
    # every parameter's whole Adam update is one loop, and forward bias+relu is one loop per layer
    assert len(elementwise) >= 4 * len(loops), (len(elementwise), len(loops))
    assert train.kernel_count < len(elementwise) / 2


def test_variable_batch_sizes_share_one_compilation(data):
    x, y = data
    (g1, logits1, _), (g2, logits2, _) = twin_graphs()
    ref = g1.compile(outputs=logits1, backend="numpy")
    nat = g2.compile(outputs=logits2, backend="llvm")
    compiled = nat._executor.compiled
    for n in (1, 7, 128, 1000, 3, 1, 64):
        np.testing.assert_allclose(nat(x=x[:n]), ref(x=x[:n]), rtol=1e-4, atol=1e-5)
    assert nat._executor.compiled is compiled
    assert len(nat._executor._bindings) <= 4  # arenas of recent batch sizes only


def test_a_binding_views_only_what_is_read_and_each_view_is_the_buffer_the_kernels_use(data):
    x, y = data
    g, logits, loss = build([32, 16], 0)
    train = g.compile(loss=loss, outputs=logits, optimizer=dg.SGD(0.1), backend="llvm")
    train(x=x[:8], y=y[:8])
    executor = train._executor
    binding = executor._bindings[8]
    temps = [b for b in executor.schedule.buffers if b.kind == "temp"]
    outputs = {executor.schedule.slot(n) for n in executor.program.outputs}
    unread = [b for b in temps if b.slot not in outputs]
    assert unread and not any(dict.__contains__(binding.arrays, b.slot) for b in unread)  # no view made yet
    for buffer in temps:  # made on first read: the buffer's shape, at the address the kernels are given
        view = binding.arrays[buffer.slot]
        assert view.shape == tuple(8 if d is None else d for d in buffer.shape) and view.dtype == buffer.dtype
        assert view.ctypes.data == int(binding.table[buffer.slot]) and buffer.slot in binding.arena
    hidden = executor.view(binding, executor.program.outputs[1])
    np.testing.assert_array_equal(hidden, train(x=x[:8], y=y[:8])[1])


def test_params_are_live_views_shared_with_predictor(data):
    x, y = data
    g, logits, loss = build([32], 0)
    train = g.compile(loss=loss, optimizer=dg.SGD(0.5), backend="llvm")
    predict = g.compile(outputs=logits, backend="llvm")
    w = g.params["fc1/w"]
    before, w_before = predict(x=x[:16]), w.copy()
    train(x=x[:64], y=y[:64])
    assert g.params["fc1/w"] is w and not np.array_equal(w, w_before)
    assert not np.allclose(predict(x=x[:16]), before)


def test_out_arrays_receive_outputs(data):
    x, _ = data
    g, logits, _ = build([32], 0)
    predict = g.compile(outputs=logits, backend="llvm")
    out = np.empty((16, 10), np.float32)
    assert predict(x=x[:16], out=out) is out
    np.testing.assert_array_equal(out, predict(x=x[:16]))
    with pytest.raises(dg.ShapeError, match="out="):
        predict(x=x[:8], out=out)


def test_compile_cache_reuses_machine_code(tmp_path, monkeypatch, data):
    monkeypatch.setenv("DRUG_CACHE_DIR", str(tmp_path))
    x, _ = data
    results = []
    for _ in range(2):
        g, logits, _ = build([32], 0)
        fn = g.compile(outputs=logits, backend="llvm")
        results.append((fn._executor.compiled.from_cache, fn(x=x[:4])))
    assert [r[0] for r in results] == [False, True]
    np.testing.assert_array_equal(results[0][1], results[1][1])
    assert list(tmp_path.glob("*.o"))


@pytest.mark.skipif(bounds.enabled(), reason="DRUG_BOUNDS_CHECK=1: the checks keep loops from vectorizing")
def test_generated_code_is_readable_and_vectorized():
    g = dg.Graph()
    a, b, c = (g.input(n, (None, 1024)) for n in "abc")
    fn = g.compile(outputs=dg.relu(a * b + c), backend="llvm")
    ir, asm = fn.ir(), fn.asm()
    assert 'define i32 @"drug_step"' in ir and "loop_mul_add_relu" in ir and "noalias" in ir
    assert any(reg in asm for reg in ("%ymm", "%zmm")), "the fused loop did not vectorize"
    x = np.random.default_rng(0).standard_normal((3, 1024)).astype(np.float32)
    # a*b + c contracts into one FMA (a single rounding), so compare with the exactly computed value
    exact = np.maximum(x.astype(np.float64) ** 2 + x, 0).astype(np.float32)
    np.testing.assert_allclose(fn(a=x, b=x, c=x), exact, rtol=1e-6)


def test_map_loops_are_not_interleaved_and_reductions_are():
    """A fused map asks LLVM's vectorizer for one vector per iteration (its interleaved copies
    cost compile time for no speed); a reduction's loop keeps LLVM's choice (partial sums)."""
    g = dg.Graph()
    a, b = g.input("a", (None, 1024)), g.input("b", (1024, 1024))
    fn = g.compile(outputs=[dg.relu(a * 2.0 + 1.0), dg.sum(b * b, axis=0)], backend="llvm")
    functions = fn.ir().split("\ndefine ")
    maps = [f for f in functions if "loop_mul_add_relu" in f.split("(")[0]]
    reductions = [f for f in functions if "loop_mul_sum" in f.split("(")[0]]
    assert maps and reductions
    assert any("!llvm.loop" in f for f in maps) and '!"llvm.loop.interleave.count", i32 1' in fn.ir()
    assert not any("!llvm.loop" in f for f in reductions)
    x = np.linspace(-1, 1, 2048, dtype=np.float32).reshape(2, 1024)
    y = np.linspace(-1, 1, 1024 * 1024, dtype=np.float32).reshape(1024, 1024)
    out, sums = fn(a=x, b=y)
    np.testing.assert_allclose(out, np.maximum(x * 2 + 1, 0), rtol=1e-6)
    np.testing.assert_allclose(sums, (y.astype(np.float64) ** 2).sum(0), rtol=1e-4)


def test_slices_that_copy_rows_skip_the_optimizer():
    """A slice of whole rows is a loop of memcpy calls: its function is `optnone` (LLVM's optimizer
    would spend a millisecond on it for nothing), and it still copies the right rows; a slice
    copied element by element (a strided last axis) keeps the optimizer. So do the entry and its
    dispatch, which only load table entries and call."""
    g = dg.Graph()
    x = g.input("x", (None, 6, 32))
    rows, strided = x[:, 2, :], x[:, 1, ::2]
    fn = g.compile(outputs=[rows, strided], backend="llvm")
    definitions = [line for line in fn.ir().splitlines() if line.startswith("define") and "op_slice" in line]
    assert len(definitions) == 2 and sum("optnone" in line for line in definitions) == 1
    hubs = [line for line in fn.ir().splitlines() if line.startswith("define") and '@"drug_step' in line]
    assert len(hubs) >= 2 and all(line.endswith("noinline optnone") for line in hubs)  # entry, dispatch, groups
    data = np.random.default_rng(0).standard_normal((3, 6, 32)).astype(np.float32)
    got_rows, got_strided = fn(x=data)
    np.testing.assert_array_equal(got_rows, data[:, 2, :])
    np.testing.assert_array_equal(got_strided, data[:, 1, ::2])


def test_code_without_a_loop_skips_the_optimizer():
    """LLVM's optimizer costs a millisecond or more per function: a kernel without a loop (a
    GEMM's dispatch to the pool, a split loop's choice between the pool and its body) and a task
    (which unpacks its frame and calls) skip it; a loop's body keeps it, and vectorizes."""
    g = dg.Graph()
    x = g.input("x", (None, 512))
    h = dg.relu(x @ g.parameter("w", (512, 512)) + g.parameter("b", (512,)))
    fn = g.compile(outputs=h * 3.0 - x, backend="llvm")
    definitions = {line.split('"')[1]: line for line in fn.ir().splitlines() if line.startswith("define")}
    (gemm,) = [line for name, line in definitions.items() if "op_matmul_bias" in name]
    (body,) = [line for name, line in definitions.items() if name.endswith(".body")]
    assert "optnone" not in body
    if threads.thread_count() > 1:  # with one thread the GEMM's kernel runs its bias loop itself
        dispatch = [line for name, line in definitions.items() if name.endswith(("_loop_mul_sub", ".task"))]
        assert "optnone" in gemm and len(dispatch) == 2 and all("optnone" in line for line in dispatch)
    data = np.random.default_rng(0).standard_normal((300, 512)).astype(np.float32)
    w, b = (g.params[name] for name in ("w", "b"))
    want = np.maximum(data.astype(np.float64) @ w + b, 0) * 3.0 - data
    np.testing.assert_allclose(fn(x=data), want, rtol=1e-4, atol=1e-4)


def test_a_loop_is_any_cycle_of_blocks():
    module = ir.Module()
    straight = ir.Function(module, ir.FunctionType(ir.VoidType(), [ir.IntType(1)]), "straight")
    b = ir.IRBuilder(straight.append_basic_block("entry"))
    with b.if_then(straight.args[0]):
        pass
    b.ret_void()
    looping = ir.Function(module, ir.FunctionType(ir.VoidType(), [ir.IntType(64)]), "looping")
    b = ir.IRBuilder(looping.append_basic_block("entry"))
    with irutil.for_range(b, looping.args[0], "i"):
        pass
    b.ret_void()
    switching = ir.Function(module, ir.FunctionType(ir.VoidType(), [ir.IntType(64)]), "switching")
    entry, back = switching.append_basic_block("entry"), switching.append_basic_block("back")
    ir.IRBuilder(entry).branch(back)
    b = ir.IRBuilder(back)
    b.switch(switching.args[0], back).add_case(1, entry)  # back only through a switch's case
    assert (irutil.has_loop(straight), irutil.has_loop(looping), irutil.has_loop(switching)) == (False, True, True)


def test_slices_alike_but_for_their_start_share_one_kernel():
    """An unrolled RNN slices one sequence per time step: slices that differ only in where they
    start share one function, called with the input pointer moved to their start. A start that
    depends on the batch (a time-major sequence) cannot move by a fixed distance: one function each."""
    g = dg.Graph()
    x = g.input("x", (None, 5, 32))
    steps = g.input("steps", (5, None, 8))
    outputs = [x[:, t, :] for t in range(5)] + [x[:, 1:4, ::2], x[:, 0:3, ::2]] + [steps[t] for t in range(2)]
    fn = g.compile(outputs=outputs, backend="llvm")
    definitions = [line for line in fn.ir().splitlines() if line.startswith("define") and "op_slice" in line]
    assert len(definitions) == 1 + 1 + 2
    rng = np.random.default_rng(0)
    data = rng.standard_normal((3, 5, 32)).astype(np.float32)
    sequence = rng.standard_normal((5, 3, 8)).astype(np.float32)
    got = fn(x=data, steps=sequence)
    expected = [data[:, t, :] for t in range(5)] + [data[:, 1:4, ::2], data[:, 0:3, ::2]] + [sequence[0], sequence[1]]
    for value, want in zip(got, expected, strict=True):
        np.testing.assert_array_equal(value, want)


class Cube(dg.Op):
    """A user op with no native kernel: runs through the callback."""

    name = "test_cube"
    arity = 1

    def infer(self, x):
        return x

    def ref(self, x):
        if np.any(x > 1e6):
            raise ValueError("cube overflow guard")
        return x**3

    def grad(self, g, out, x):
        return [g * 3.0 * x * x]


def test_custom_op_runs_through_callback():
    g = dg.Graph(dtype="float64")
    x = g.input("x", (None, 3))
    y = dg.sum(Cube()(x) * 2.0)
    fn = g.compile(outputs=[y, dg.grad(y, x)], backend="llvm")
    assert [k.kind for k in fn.program.schedule.kernels].count("callback") == 1
    xv = np.arange(6.0).reshape(2, 3)
    value, grad = fn(x=xv)
    assert value == pytest.approx(2 * (xv**3).sum())
    np.testing.assert_allclose(grad, 6 * xv**2)
    with pytest.raises(ValueError, match="cube overflow guard"):
        fn(x=xv * 1e7)


UNARY = [dg.relu, dg.sigmoid, dg.tanh, dg.exp, lambda v: -v, lambda v: v * 0.5]
BINARY = [dg.add, dg.mul, dg.sub, lambda a, b: a / (dg.exp(b) + 1.0)]


@st.composite
def random_graphs(draw):
    """A random DAG of elementwise ops, matmuls and reductions over a (None, n) input."""
    n = draw(st.integers(1, 6))
    steps = draw(
        st.lists(st.tuples(st.integers(0, 4), st.integers(0, 100), st.integers(0, 100)), min_size=1, max_size=12)
    )
    return n, steps


def build_random(n, steps, backend_dtype="float32", seed=0):
    g = dg.Graph(seed=seed, dtype=backend_dtype)
    x = g.input("x", (None, n))
    w = g.parameter("w", (n, n))
    b = g.parameter("b", (n,), init="normal")
    values = [x, w @ w.T if n > 1 else w, b]
    for kind, i, j in steps:
        u, v = values[i % len(values)], values[j % len(values)]
        if kind == 0:
            values.append(UNARY[j % len(UNARY)](u))
        elif kind == 1:
            op = BINARY[j % len(BINARY)]
            try:
                values.append(op(u, v))
            except dg.ShapeError:  # (None, n) and (n, n) do not broadcast
                values.append(op(u, u))
        elif kind == 2 and u.ndim == 2:
            values.append(u @ w)
        elif kind == 3 and u.ndim == 2:
            values.append(dg.sum(u, axis=i % 2, keepdims=True) * 0.1 + u)
        else:
            values.append(dg.mean(u, axis=-1, keepdims=True) - u)
    out = dg.sum(dg.tanh(values[-1])) + dg.sum(x * 0.0)
    return g, x, w, b, out


@settings(max_examples=30, deadline=None)
@given(random_graphs(), st.integers(1, 5))
def test_random_graphs_agree_with_reference(spec, batch):
    n, steps = spec
    xv = np.random.default_rng(batch).uniform(-1, 1, (batch, n))
    results = []
    for backend in ("numpy", "llvm"):
        g, x, w, b, out = build_random(n, steps, "float64")
        fn = g.compile(outputs=[out, *dg.grad(out, [x, w, b])], backend=backend)
        results.append(fn(x=xv))
    for ref, nat in zip(*results):
        np.testing.assert_allclose(nat, ref, rtol=1e-9, atol=1e-12)


def test_large_loops_split_across_threads():
    from drug.backends.llvm import threads

    g = dg.Graph()
    a, b, c, d, e = (g.input(n, (None,)) for n in "abcde")
    fn = g.compile(outputs=dg.relu(a * b + c) * d - e, backend="llvm")
    if threads.pool() is None:
        pytest.skip("one thread (DRUG_THREADS=1 or one usable CPU): loops run serially")
    assert "drug_pool_run" in fn.ir()
    rng = np.random.default_rng(0)
    for n in (1 << 20, 1000, 1):  # threaded, then below the threshold
        xs = {k: rng.standard_normal(n).astype(np.float32) for k in "abcde"}
        exact = (np.maximum(xs["a"].astype(np.float64) * xs["b"] + xs["c"], 0) * xs["d"] - xs["e"]).astype(np.float32)
        out = np.empty(n, np.float32)
        assert fn(**xs, out=out) is out
        np.testing.assert_allclose(out, exact, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "shape, axis",
    [
        ((9, 32, 28, 28), (0, 2, 3)),  # a bias gradient: only the channel axis (in the middle) is kept
        ((9, 32, 28, 28), (2, 3)),  # a global pool: batch and channel kept
        ((9, 24, 1024), (0, 1)),  # only the innermost axis kept
    ],
)
def test_large_reductions_split_over_a_kept_axis(shape, axis):
    """A reduction large without its batch axis is shared out over an axis it does not reduce:
    each output element summed by one task, in the serial order."""
    from drug.backends.llvm import threads

    g = dg.Graph(dtype="float64")
    x = g.input("x", (None,) + shape[1:])
    out = dg.sum(dg.relu(x) * 1.5, axis=axis)
    fn = g.compile(outputs=out, backend="llvm")
    if threads.pool() is not None:
        assert ".task" in fn.ir() and "drug_pool_run" in fn.ir()
    xv = np.random.default_rng(0).standard_normal(shape)
    np.testing.assert_allclose(fn(x=xv), (np.maximum(xv, 0) * 1.5).sum(axis=axis), rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("nbytes", [1, 1000, 40 << 20])
def test_arena_memory_is_zeroed_aligned_and_writable(nbytes):
    """Small arenas and large ones (which ask for transparent huge pages) alike."""
    from drug.backends.llvm import arena

    memory = arena.allocate(nbytes)
    assert memory.size == nbytes and memory.ctypes.data % arena.ALIGN == 0 and not memory.any()
    memory[:] = 7
    assert memory[-1] == 7
