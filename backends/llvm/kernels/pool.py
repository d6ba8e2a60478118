"""Kernels of local pooling with strides and padding (ops/pool.py).

Which taps of a window read real pixels (not padding) depends only on where the window is, so
the output rows and columns split at compile time into segments with one set of valid taps each
(the border windows and the interior). Each (image, channel) plane is computed region by region:
a loop over the region's output pixels whose body combines its fixed list of taps, with no tests,
so it vectorizes. The gradients add into the image, where overlapping windows meet: their region
pass records what each tap adds (one row per tap and output row), and `scatter` adds the records
into each input row with its columns grouped by residue modulo the stride, so that no two
iterations of a loop add into one pixel."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

from llvmlite import ir

from ....ops.pool import AvgPool2D, AvgPool2DGrad, MaxPool2D, MaxPool2DGrad, MaxPool2DTangent, Pooling
from ..irutil import I64, PTR, for_range, i64, llvm_type
from ..lowering import kernel

Segment = tuple[int, int, tuple[int, ...]]  # [start, stop) of output indices and their valid taps


def segments(n: int, kernel: int, stride: int, pad: int, out: int) -> list[Segment]:
    """The output indices of one axis grouped into runs with equal sets of valid taps."""
    runs: list[Segment] = []
    for o in range(out):
        taps = tuple(t for t in range(kernel) if 0 <= o * stride + t - pad < n)
        if runs and runs[-1][2] == taps:
            runs[-1] = (runs[-1][0], o + 1, taps)
        else:
            runs.append((o, o + 1, taps))
    return runs


class _Geometry:
    """The static layout of one pooling op: sizes, row and column segments, scatter workspace."""

    def __init__(self, op: Pooling):
        self.op = op
        self.h, self.w = op.in_hw
        self.ho, self.wo = op.out_hw
        (kh, kw), (sh, sw), ((top, _), (left, _)) = op.kernel, op.stride, op.pads
        self.rows = segments(self.h, kh, sh, top, self.ho)
        self.cols = segments(self.w, kw, sw, left, self.wo)

    @property
    def margin(self) -> int:
        """Zeros before (and, within `row_length`, after) each row of tap contributions."""
        return self.op.kernel[1] // self.op.stride[1] + 1

    @property
    def row_length(self) -> int:
        return 2 * self.margin + max(self.wo, -(-self.w // self.op.stride[1])) + 1

    def contributions_size(self) -> int:
        """One row per tap and output row: what each window's tap adds into the image."""
        kh, kw = self.op.kernel
        return kh * kw * self.ho * self.row_length

    def contribution_offset(self, i: int, j: int) -> int:
        """Where the rows of tap (i, j) start (an output row's row follows at `row_length`)."""
        return ((i * self.op.kernel[1] + j) * self.ho) * self.row_length + self.margin


class _PoolEmitter(_Geometry):
    """IR for one pooling kernel over a node's planes; `image` is the unpooled NCHW node."""

    def __init__(self, k, node, image):
        super().__init__(node.op)
        self.k, self.b = k, k.b
        self.real = llvm_type(node.dtype)
        self.f = k.scalar(node)
        self.itemsize = node.dtype.itemsize
        self.image = image
        self.contributions: ir.Value | None = None  # the gradients' records (`record`, `scatter`)
        self.target: ir.Value | None = None  # the plane of the image-sized output `scatter` adds into

    def at(self, pointer: ir.Value, offset: ir.Value, name: str) -> ir.Value:
        return self.b.gep(pointer, [offset], source_etype=self.real, inbounds=True, name=name)

    def get(self, pointer: ir.Value, offset: ir.Value, name: str) -> ir.Value:
        return self.b.load(self.at(pointer, offset, f"{name}.at"), typ=self.real, name=name)

    def put(self, pointer: ir.Value, offset: ir.Value, value: ir.Value) -> None:
        self.b.store(value, self.at(pointer, offset, "put.at"))

    def plane(self, node, index: ir.Value, pooled: bool) -> ir.Value:
        """Pointer to plane `index` of an image-sized (or pooled-sized) NCHW node."""
        size = self.ho * self.wo if pooled else self.h * self.w
        return self.at(self.k.ptr(node), self.b.mul(index, i64(size), name="plane_offset"), f"{node.op.name}_plane")

    def planes(self):
        """Loop over the image's (batch, channel) planes."""
        count = self.b.mul(self.k.dims(self.image)[0], i64(self.image.shape[1]), name="planes")
        return for_range(self.b, count, "plane")

    def zero(self, pointer: ir.Value, elements: int) -> None:
        memset = self.b.module.declare_intrinsic("llvm.memset", [PTR, I64])
        nbytes = i64(elements * self.itemsize)
        self.b.call(memset, [pointer, ir.Constant(ir.IntType(8), 0), nbytes, ir.Constant(ir.IntType(1), 0)])

    def pixel(self, p: ir.Value, q: ir.Value, i: int, j: int) -> ir.Value:
        """Offset in the plane of tap (i, j) of window (p, q)."""
        b, op = self.b, self.op
        (sh, sw), ((top, _), (left, _)) = op.stride, op.pads
        y = b.add(b.mul(p, i64(sh)), i64(i - top), name=f"y{i}")
        x = b.add(b.mul(q, i64(sw)), i64(j - left), name=f"x{j}")
        return b.add(b.mul(y, i64(self.w)), x, name=f"pixel{i}_{j}")

    def regions(self) -> Iterator[tuple[ir.Value, ir.Value, list[tuple[int, int]]]]:
        """(p, q, valid taps) inside a loop over each region's windows (row segment x column segment)."""
        b = self.b
        for p0, p1, rows in self.rows:
            with for_range(b, i64(p1), f"p{p0}", start=i64(p0)) as p:
                for q0, q1, cols in self.cols:
                    with for_range(b, i64(q1), f"q{q0}", start=i64(q0)) as q:
                        yield p, q, [(i, j) for i in rows for j in cols]

    def record(self, p: ir.Value, q: ir.Value, i: int, j: int, value: ir.Value) -> None:
        """Tap (i, j) of window (p, q) adds `value` into its pixel (written out by `scatter`)."""
        b = self.b
        row = b.add(b.mul(p, i64(self.row_length)), i64(self.contribution_offset(i, j)), name=f"c{i}_{j}_row")
        self.put(self.contributions, b.add(row, q, name=f"c{i}_{j}_at"), value)

    def scatter(self) -> None:
        """dx += what every window's taps recorded (taps that read padding record nothing; their
        entries, and the margins around each row, stay zero from the start). Per output row p
        and tap row i, one loop over input row y = p*sh + i - top adds them in, its columns
        grouped by their residue modulo the stride: input column sw*m + r takes from window
        m + (r + left - j) / sw of every tap column j with that residue, so an iteration stores
        to sw consecutive pixels, no two iterations add into one pixel, and the loop vectorizes."""
        b, f, op = self.b, self.f, self.op
        (sh, sw), ((top, _), (left, _)), kw = op.stride, op.pads, op.kernel[1]
        residues = {r: [(j, (r + left - j) // sw) for j in range(kw) if (r + left - j) % sw == 0] for r in range(sw)}
        for p0, p1, rows in self.rows:
            with for_range(b, i64(p1), f"r{p0}", start=i64(p0)) as p:
                row_at = b.mul(p, i64(self.row_length), name="contribution_row")
                for i in rows:
                    y = b.add(b.mul(p, i64(sh)), i64(i - top), name=f"y{i}")
                    image_row = self.at(self.target, b.mul(y, i64(self.w), name="dx_row_start"), "dx_row")

                    def add_group(m: ir.Value, widths: range, i=i, image_row=image_row, row_at=row_at) -> None:
                        for r in widths:
                            offsets = [self.contribution_offset(i, j) + shift for j, shift in residues[r]]
                            if not offsets:
                                continue
                            start = b.add(row_at, m, name="c_at")
                            terms = [self.get(self.contributions, b.add(start, i64(o)), "c") for o in offsets]
                            pixel = b.add(b.mul(m, i64(sw)), i64(r), name=f"x{r}")
                            total = functools.reduce(f.add, terms)
                            self.put(image_row, pixel, f.add(self.get(image_row, pixel, "dx"), total))

                    full = self.w // sw
                    with for_range(b, i64(full), "m") as m:
                        add_group(m, range(sw))
                    if self.w % sw:
                        add_group(i64(full), range(self.w % sw))

    def share(self, values: ir.Value, count: ir.Value) -> ir.Value:
        """values / count, 0 where the count is 0 (a NaN window: no pixel equals its max)."""
        f = self.f
        return f.select(f.compare(">", count, f.const(0.0)), f.div(values, count), f.const(0.0))

    def divisor(self, taps: list[tuple[int, int]]) -> ir.Value:
        """What an average-pooling window divides its sum by: its size, or its pixels that are
        not padding (count_include_pad=False)."""
        kh, kw = self.op.kernel
        return self.f.const(float(kh * kw if self.op.count_include_pad else len(taps)))

    def is_max(self, image, pixel, maximum) -> ir.Value:
        return self.f.compare("==", self.get(image, pixel, "x"), maximum)


def _windows(k, node, combine: Callable[[_PoolEmitter, list[ir.Value], list[tuple[int, int]]], ir.Value]) -> None:
    """out[p, q] = combine(e, the values of the window's valid taps, the taps), region by region."""
    (x,) = node.inputs
    e = _PoolEmitter(k, node, x)
    with e.planes() as plane:
        source, target = e.plane(x, plane, False), e.plane(node, plane, True)
        for p, q, taps in e.regions():
            values = [e.get(source, e.pixel(p, q, i, j), "x") for i, j in taps]
            e.put(target, e.b.add(e.b.mul(p, i64(e.wo)), q, name="out_at"), combine(e, values, taps))


@kernel(MaxPool2D)
def _max_pool2d(k, node):
    """The max of the window's valid taps (padding never wins)."""
    _windows(k, node, lambda e, values, taps: functools.reduce(lambda a, v: e.f.accumulate("max", a, v), values,
                                                                e.f.const(float("-inf"))))  # fmt: skip


@kernel(AvgPool2D)
def _avg_pool2d(k, node):
    """The sum of the window's valid taps (padding adds nothing) / its divisor."""
    _windows(k, node, lambda e, values, taps: e.f.div(functools.reduce(e.f.add, values), e.divisor(taps)))


@kernel(MaxPool2DTangent)
def _max_pool2d_tangent(k, node):
    """t[p, q] = the tangent summed over window (p, q)'s maxima, divided by their count."""
    x, out, v = node.inputs
    e = _PoolEmitter(k, node, x)
    b, f = e.b, e.f
    with e.planes() as plane:
        source, maxima, tangents = e.plane(x, plane, False), e.plane(out, plane, True), e.plane(v, plane, False)
        target = e.plane(node, plane, True)
        for p, q, taps in e.regions():
            at = b.add(b.mul(p, i64(e.wo)), q, name="out_at")
            maximum = e.get(maxima, at, "max")
            count, total = f.const(0.0), f.const(0.0)
            for i, j in taps:
                pixel = e.pixel(p, q, i, j)
                hit = e.is_max(source, pixel, maximum)
                count = f.add(count, f.select(hit, f.const(1.0), f.const(0.0)))
                total = f.add(total, f.select(hit, e.get(tangents, pixel, "v"), f.const(0.0)))
            e.put(target, at, e.share(total, count))


def _scatter_workspace(node):
    """A row per tap and output row of what the windows' taps add into the image."""
    return (_Geometry(node.op).contributions_size(),), node.dtype


@kernel(MaxPool2DGrad, workspace=_scatter_workspace)
def _max_pool2d_grad(k, node):
    """Per plane, region by region: each window's maxima (compared once) share g / their count,
    recorded per tap; then dx = 0 and the records added in (`scatter`)."""
    x, out, g = node.inputs
    e = _PoolEmitter(k, node, x)
    b, f = e.b, e.f
    e.contributions = k.workspace(node)
    e.zero(e.contributions, e.contributions_size())
    with e.planes() as plane:
        source, maxima, grads = e.plane(x, plane, False), e.plane(out, plane, True), e.plane(g, plane, True)
        e.target = e.plane(node, plane, False)
        for p, q, taps in e.regions():
            at = b.add(b.mul(p, i64(e.wo)), q, name="out_at")
            maximum = e.get(maxima, at, "max")
            hits = [e.is_max(source, e.pixel(p, q, i, j), maximum) for i, j in taps]
            count = functools.reduce(f.add, [f.select(hit, f.const(1.0), f.const(0.0)) for hit in hits])
            share = e.share(e.get(grads, at, "g"), count)
            for (i, j), hit in zip(taps, hits):
                e.record(p, q, i, j, f.select(hit, share, f.const(0.0)))
        e.zero(e.target, e.h * e.w)
        e.scatter()


@kernel(AvgPool2DGrad, workspace=_scatter_workspace)
def _avg_pool2d_grad(k, node):
    """Per plane, region by region: g / divisor recorded for each valid tap of the window; then
    dx = 0 and the records added in (`scatter`)."""
    (g,) = node.inputs
    e = _PoolEmitter(k, node, node)
    b, f = e.b, e.f
    e.contributions = k.workspace(node)
    e.zero(e.contributions, e.contributions_size())
    with e.planes() as plane:
        grads = e.plane(g, plane, True)
        e.target = e.plane(node, plane, False)
        for p, q, taps in e.regions():
            share = f.div(e.get(grads, b.add(b.mul(p, i64(e.wo)), q, name="out_at"), "g"), e.divisor(taps))
            for i, j in taps:
                e.record(p, q, i, j, share)
        e.zero(e.target, e.h * e.w)
        e.scatter()
