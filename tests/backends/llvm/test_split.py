"""Compiling one module in parts on several threads (compiler/split.py, jit.emit_objects): the
parts link back into the same program, every kind of kernel survives the split, and the cache
file that holds several object files is read back or refused, never misread."""

from __future__ import annotations

import ctypes
import sys

import llvmlite.binding as llvm
import numpy as np
import pytest
from conftest import EXAMPLES

import drug as dg
from drug.backends.llvm import jit, split
from drug.backends.llvm.split import split_module

sys.path.insert(0, str(EXAMPLES))
from mnist_dense import build  # noqa: E402


@pytest.fixture
def part_counts(monkeypatch):
    """Split every module as finely as it goes (two parts per thread: 8 on 4 threads) and record how many parts each had
    (compiling in this process: a forked compiler's calls are not seen here)."""
    counts: list[int] = []
    emit = jit.emit_objects

    def recording(texts, passes=True, threads=None):
        if passes:  # a program's module (drug's sgemm, compiled on the side, skips the passes)
            counts.append(len(texts))
        return emit(texts, passes, threads)

    monkeypatch.setenv("DRUG_CACHE", "0")
    monkeypatch.setenv("DRUG_COMPILE_PROCESS", "0")
    monkeypatch.setenv("DRUG_COMPILE_THREADS", "4")
    monkeypatch.setattr(jit, "MIN_LINES_PER_PART", 1)
    monkeypatch.setattr(jit, "emit_objects", recording)
    return counts


def _mlp_step(seed):
    g, logits, loss = build([48, 32], seed)
    return g, g.compile(loss=loss, outputs=logits, optimizer=dg.Adam(1e-3), backend="llvm")


def _conv_step(seed):
    g = dg.Graph(seed=seed)
    x, y = g.input("x", (None, 1, 12, 12)), g.input("y", (None,), dtype="int32")
    h = dg.layers.Conv2D(4, 3, padding="same", pad_mode="reflect", activation="relu", name="conv")(x)
    h = dg.max_pool2d(h, 2)
    logits = dg.global_pool(h, "avg") @ g.parameter("w", (4, 10))
    return g, g.compile(loss=dg.softmax_cross_entropy(logits, y), outputs=logits, optimizer=dg.SGD(0.1), backend="llvm")


def _scan_step(seed):
    g = dg.Graph(seed=seed)
    xs = g.input("xs", (None, 6, 8))
    states, last = dg.layers.GRUCell(16, name="gru").sequence(xs, scan=True)
    weights = g.constant(np.linspace(-1, 1, 16, dtype=np.float32))  # a constant inside a scan body:
    decayed, _ = dg.scan(lambda c, h: (dg.tanh(c * weights + h), c), last * 0.0, dg.transpose(states, (1, 0, 2)))
    loss = dg.mean(last * last) + dg.mean(decayed * decayed)  # an internal global that parts copy
    return g, g.compile(loss=loss, outputs=last, optimizer=dg.RMSProp(1e-2), backend="llvm")


def _feeds(name, rng):
    if name == "mlp":
        return {"x": rng.random((5, 784), np.float32), "y": rng.integers(0, 10, 5).astype(np.int32)}
    if name == "conv":
        return {"x": rng.random((3, 1, 12, 12), np.float32), "y": rng.integers(0, 10, 3).astype(np.int32)}
    return {"xs": rng.standard_normal((4, 6, 8)).astype(np.float32)}


BUILDERS = {"mlp": _mlp_step, "conv": _conv_step, "scan": _scan_step}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_split_compilation_runs_the_same_program(name, part_counts, monkeypatch):
    runs = []
    for threads in ("4", "1"):
        monkeypatch.setenv("DRUG_COMPILE_THREADS", threads)
        g, step = BUILDERS[name](seed=3)
        rng = np.random.default_rng(0)
        outputs = [step(**_feeds(name, rng)) for _ in range(3)]
        runs.append((outputs, {k: v.copy() for k, v in g.params.items()}))
    assert part_counts[0] == 2 * 4 and part_counts[1] == 1
    if name == "scan":
        assert "internal constant" in step.ir()
    (split_out, split_params), (whole_out, whole_params) = runs
    for a, b in zip(split_out, whole_out):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)  # the same machine code, only in other files
    for key in whole_params:
        np.testing.assert_array_equal(split_params[key], whole_params[key])


def test_split_keeps_every_definition_once():
    g, step = _mlp_step(seed=0)
    text = step.ir()
    parts = split_module(text, "drug_step", 3)
    assert parts is not None and len(parts) == 3
    defined = [line.split('@"')[1].split('"')[0] for p in parts for line in p.splitlines() if line.startswith("define")]
    original = [line.split('@"')[1].split('"')[0] for line in text.splitlines() if line.startswith("define")]
    kernels = [n for n in original if n.startswith("k") and "." not in n]
    assert sorted(n for n in defined if n in kernels) == sorted(kernels)  # each kernel in one part
    assert set(defined) == set(original)
    assert sum('@"drug_failed_kernel" = external global i32' in p for p in parts) == 2  # defined in part 0 only
    for part in parts:
        llvm.parse_assembly(part).verify()


SYNTHETIC = """\
@"drug_failed_kernel" = hidden global i32 0
@"table" = internal constant [2 x i32] [i32 1, i32 2]
define internal i32 @"helper"(i32 %x) {
entry:
  %y = add i32 %x, 1
  ret i32 %y
}
define internal i32 @"k0"() {
entry:
  %a = call i32 @"helper"(i32 1)
  ret i32 %a
}
define internal i32 @"k1"() {
entry:
  %a = call i32 @"helper"(i32 2)
  %b = call i32 @"helper"(i32 %a)
  ret i32 %b
}
define internal i32 @"k2"() {
entry:
  %p = getelementptr [2 x i32], ptr @"table", i64 0, i64 1
  %v = load i32, ptr %p
  store i32 %v, ptr @"drug_failed_kernel"
  ret i32 %v
}
define i32 @"drug_step"() {
entry:
  %a = call i32 @"k0"()
  %b = call i32 @"k1"()
  %c = call i32 @"k2"()
  %s = add i32 %a, %b
  %t = add i32 %s, %c
  ret i32 %t
}
"""


def test_a_module_splits_into_parts_that_link_back():
    """Each kernel lands in one part with the helpers and internal constants it uses; kernels called
    across parts are declared there; the shared global is defined once; the parts link and run."""
    parts = split_module(SYNTHETIC, "drug_step", 2)
    assert parts is not None and len(parts) == 2
    roots = {"k0", "k1", "k2"}
    owners = {name: i for i, p in enumerate(parts) for name in roots if f'define i32 @"{name}"' in p}
    assert set(owners) == roots  # each kernel defined once, with external linkage to be called across parts
    for i, part in enumerate(parts):
        llvm.parse_assembly(part).verify()
        needs_helper = any(owners[k] == i for k in ("k0", "k1"))
        assert ('@"helper"(i32 %x)' in part) == needs_helper
        assert ('@"table" = internal constant' in part) == (owners["k2"] == i)
        for name in roots - {k for k, o in owners.items() if o == i}:
            if f'@"{name}"()' in part:
                assert f'declare i32 @"{name}"()' in part
    assert sum('@"drug_failed_kernel" = hidden global' in p for p in parts) == 1
    engine = jit._load(jit.emit_objects(parts), "drug_step")
    step = ctypes.CFUNCTYPE(ctypes.c_int32)(engine[1])
    assert step() == 2 + 4 + 2  # k0 = 2, k1 = helper(helper(2)) = 4, k2 = table[1] = 2


@pytest.mark.parametrize(
    "text",
    [
        "define i32 @f() {\nentry:\n  ret i32 0\n}\n",  # no kernels to share out
        'define i32 @"drug_step"() {\nentry:\n  ret i32 0\n}\nmodule asm "nop"\n',  # a line it does not know
        '@"g" = internal global i32 0\ndefine i32 @"drug_step"() {\nentry:\n  ret i32 0\n}\n',
    ],
)
def test_unknown_modules_stay_whole(text):
    assert split_module(text, "drug_step", 2) is None


def test_cache_entries_hold_several_objects_and_refuse_damage(tmp_path, monkeypatch):
    monkeypatch.setenv("DRUG_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("DRUG_COMPILE_THREADS", "2")
    monkeypatch.setattr(jit, "MIN_LINES_PER_PART", 1)
    x = np.random.default_rng(1).random((4, 784), np.float32)
    g, logits, _ = build([32, 48, 64], 0)
    first = g.compile(outputs=logits, backend="llvm")
    (entry,) = tmp_path.glob("*.o")
    assert len(jit._unpack(entry.read_bytes())) == jit.PARTS_PER_THREAD * 2
    entry.write_bytes(entry.read_bytes()[:-10])  # cut short: a miss, compiled again
    g2, logits2, _ = build([32, 48, 64], 0)
    again = g2.compile(outputs=logits2, backend="llvm")
    assert not again._executor.compiled.from_cache
    g3, logits3, _ = build([32, 48, 64], 0)
    cached = g3.compile(outputs=logits3, backend="llvm")
    assert cached._executor.compiled.from_cache
    np.testing.assert_array_equal(cached(x=x), first(x=x))
    assert jit._unpack(b"not ours") is None


def _function(name: str, lines: int, attributes: str = "") -> str:
    body = "\n".join(f"  %v{i} = add i32 {i}, 1" for i in range(lines))
    return f'define internal i32 @"{name}"() {attributes}\n{{\nentry:\n{body}\n  ret i32 0\n}}\n'


def test_parts_are_balanced_by_what_llvm_spends():
    """A hub LLVM does not optimize (`optnone`) weighs a fraction of its lines, so a long dispatch
    does not leave part 0 without kernels; every function also weighs a fixed cost, so many short
    ones are not taken for free."""
    kernels = [f"k{i}" for i in range(4)]
    calls = "".join(f'  %c{i} = call i32 @"{k}"()\n' for i, k in enumerate(kernels))
    padding = "".join(f"  %p{i} = add i32 {i}, 1\n" for i in range(400))
    hub = f'define i32 @"drug_step"() noinline optnone\n{{\nentry:\n{padding}{calls}  ret i32 0\n}}\n'
    text = hub + "".join(_function(k, 60) for k in kernels)
    parts = split_module(text, "drug_step", 2)
    assert parts is not None
    assert sum(f'define i32 @"{k}"' in parts[0] for k in kernels) == 2
    module = split._read(text)
    hub_cost, kernel_cost = module.functions["drug_step"].cost, module.functions["k0"].cost
    assert hub_cost < kernel_cost < len(module.functions["k0"].lines) * 2
    short = split._read(_function("s", 1)).functions["s"]
    assert short.cost >= 3 * len(short.lines)
