"""Kernels of local pooling with strides and padding (ops/pool.py). Each (image, channel) plane is
pooled one output row at a time: for every window tap (i, j), unrolled, the output columns whose
tap reads a real pixel form a range known at compile time, so the loop over them has no test and
vectorizes (stride-2 loads become shuffles); rows of padding are skipped with one test per row."""

from __future__ import annotations

from collections.abc import Callable

from llvmlite import ir

from ....ops.pool import AvgPool2D, AvgPool2DGrad, MaxPool2D, MaxPool2DGrad, MaxPool2DTangent
from ..irutil import I64, PTR, for_range, i64, llvm_type
from ..lowering import kernel

Tap = Callable[[ir.Value, ir.Value], None]  # (output column q, offset of the tap's pixel in the plane)


class _PoolEmitter:
    """IR for one pooling kernel over a node's planes; `image` is the unpooled NCHW node."""

    def __init__(self, k, node, image):
        self.k, self.b, self.op = k, k.b, node.op
        self.real = llvm_type(node.dtype)
        self.f = k.scalar(node)
        self.itemsize = node.dtype.itemsize
        self.image = image
        self.h, self.w = self.op.in_hw
        self.ho, self.wo = self.op.out_hw

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

    def columns(self, name: str):
        return for_range(self.b, i64(self.wo), name)

    def zero(self, pointer: ir.Value, elements: int) -> None:
        memset = self.b.module.declare_intrinsic("llvm.memset", [PTR, I64])
        nbytes = i64(elements * self.itemsize)
        self.b.call(memset, [pointer, ir.Constant(ir.IntType(8), 0), nbytes, ir.Constant(ir.IntType(1), 0)])

    def taps(self, p: ir.Value, body: Tap) -> None:
        """body(q, pixel) for every tap (i, j) of the windows of output row p and every output
        column q whose tap reads a real pixel; `pixel` is that pixel's offset in the plane."""
        b, op = self.b, self.op
        sh, (top, bottom) = op.stride[0], op.pads[0]
        for i in range(op.kernel[0]):
            y = b.add(b.mul(p, i64(sh)), i64(i - top), name=f"y{i}")
            if top or bottom:
                inside = b.and_(b.icmp_signed(">=", y, i64(0)), b.icmp_signed("<", y, i64(self.h)), name="row_in")
                with b.if_then(inside):
                    self._row_taps(y, i, body)
            else:
                self._row_taps(y, i, body)

    def _row_taps(self, y: ir.Value, i: int, body: Tap) -> None:
        b, op = self.b, self.op
        sw, left = op.stride[1], op.pads[1][0]
        row_start = b.mul(y, i64(self.w), name=f"row{i}")
        for j in range(op.kernel[1]):
            lo = max(0, -(-(left - j) // sw))
            hi = min(self.wo, max(lo, (self.w - 1 + left - j) // sw + 1))
            with for_range(b, i64(hi), f"q{i}_{j}", start=i64(lo)) as q:
                column = b.add(b.mul(q, i64(sw)), i64(j - left), name="x")
                body(q, b.add(row_start, column, name="pixel"))

    def divisor(self, p: ir.Value, q: ir.Value) -> ir.Value:
        """What the window at (p, q) divides its sum by (average pooling)."""
        kh, kw = self.op.kernel
        if self.op.count_include_pad:
            return self.f.const(float(kh * kw))
        (sh, sw), ((top, _), (left, _)) = self.op.stride, self.op.pads
        rows = self._span(p, sh, top, kh, self.h, "rows")
        cols = self._span(q, sw, left, kw, self.w, "cols")
        return self.b.uitofp(self.b.mul(rows, cols, name="window_pixels"), self.real)

    def _span(self, index: ir.Value, stride: int, pad: int, size: int, n: int, name: str) -> ir.Value:
        """How many of a window's `size` positions starting at index*stride - pad lie in [0, n)."""
        b = self.b
        start = b.sub(b.mul(index, i64(stride)), i64(pad), name=f"{name}.start")
        end = b.add(start, i64(size), name=f"{name}.end")
        lo = b.select(b.icmp_signed("<", start, i64(0)), i64(0), start, name=f"{name}.lo")
        hi = b.select(b.icmp_signed(">", end, i64(n)), i64(n), end, name=f"{name}.hi")
        return b.sub(hi, lo, name=name)

    def is_max(self, x_plane, pixel, out_row, q) -> ir.Value:
        """Whether the pixel is its window's maximum."""
        return self.f.compare("==", self.get(x_plane, pixel, "x"), self.get(out_row, q, "max"))

    def share(self, values_row, counts_row, q) -> ir.Value:
        """values / count, 0 where the count is 0 (a NaN window: no pixel equals its max)."""
        f = self.f
        count = self.get(counts_row, q, "count")
        return f.select(f.compare(">", count, f.const(0.0)), f.div(self.get(values_row, q, "value"), count),
                        f.const(0.0))  # fmt: skip


def _one_row(node):
    return (node.op.out_hw[1],), node.dtype


@kernel(MaxPool2D)
def _max_pool2d(k, node):
    """out[p, q] = max over the window's taps, from -inf (padding never wins)."""
    (x,) = node.inputs
    e = _PoolEmitter(k, node, x)
    b, f = e.b, e.f
    with e.planes() as plane:
        source, target = e.plane(x, plane, False), e.plane(node, plane, True)
        with for_range(b, i64(e.ho), "p") as p:
            row = e.at(target, b.mul(p, i64(e.wo)), "out_row")
            with e.columns("init") as q:
                e.put(row, q, f.const(float("-inf")))
            e.taps(
                p, lambda q, pixel: e.put(row, q, f.accumulate("max", e.get(row, q, "max"), e.get(source, pixel, "x")))
            )


def _tie_counts(e: _PoolEmitter, source, out_row, counts, p, also: Tap | None = None) -> None:
    """counts[q] = how many taps of window (p, q) read its maximum; `also(q, pixel)` runs per tap."""
    f = e.f
    with e.columns("count_init") as q:
        e.put(counts, q, f.const(0.0))

    def count(q, pixel):
        hit = f.select(e.is_max(source, pixel, out_row, q), f.const(1.0), f.const(0.0))
        e.put(counts, q, f.add(e.get(counts, q, "count"), hit))
        if also is not None:
            also(q, pixel)

    e.taps(p, count)


@kernel(MaxPool2DGrad, workspace=lambda node: ((2 * node.op.out_hw[1],), node.dtype))
def _max_pool2d_grad(k, node):
    """dx = 0; per output row: count each window's maxima, then add g / count into each of them."""
    x, out, g = node.inputs
    e = _PoolEmitter(k, node, x)
    b, f = e.b, e.f
    counts = k.workspace(node)
    shares = e.at(counts, i64(e.wo), "shares")
    with e.planes() as plane:
        source, maxima, grads = e.plane(x, plane, False), e.plane(out, plane, True), e.plane(g, plane, True)
        target = e.plane(node, plane, False)
        e.zero(target, e.h * e.w)
        with for_range(b, i64(e.ho), "p") as p:
            out_row = e.at(maxima, b.mul(p, i64(e.wo)), "out_row")
            g_row = e.at(grads, b.mul(p, i64(e.wo)), "g_row")
            _tie_counts(e, source, out_row, counts, p)
            with e.columns("share") as q:
                e.put(shares, q, e.share(g_row, counts, q))

            def route(q, pixel):
                add = f.select(e.is_max(source, pixel, out_row, q), e.get(shares, q, "share"), f.const(0.0))
                e.put(target, pixel, f.add(e.get(target, pixel, "dx"), add))

            e.taps(p, route)


@kernel(MaxPool2DTangent, workspace=lambda node: ((node.op.out_hw[1],), node.dtype))
def _max_pool2d_tangent(k, node):
    """t[p, q] = the tangent summed over window (p, q)'s maxima, divided by their count."""
    x, out, v = node.inputs
    e = _PoolEmitter(k, node, x)
    b, f = e.b, e.f
    counts = k.workspace(node)
    with e.planes() as plane:
        source, maxima, tangents = e.plane(x, plane, False), e.plane(out, plane, True), e.plane(v, plane, False)
        target = e.plane(node, plane, True)
        with for_range(b, i64(e.ho), "p") as p:
            out_row = e.at(maxima, b.mul(p, i64(e.wo)), "out_row")
            row = e.at(target, b.mul(p, i64(e.wo)), "t_row")
            with e.columns("init") as q:
                e.put(row, q, f.const(0.0))

            def pick(q, pixel):
                picked = f.select(e.is_max(source, pixel, out_row, q), e.get(tangents, pixel, "v"), f.const(0.0))
                e.put(row, q, f.add(e.get(row, q, "sum"), picked))

            _tie_counts(e, source, out_row, counts, p, also=pick)
            with e.columns("mean") as q:
                e.put(row, q, e.share(row, counts, q))


@kernel(AvgPool2D)
def _avg_pool2d(k, node):
    """out[p, q] = the window's sum (padding adds nothing) / its divisor."""
    (x,) = node.inputs
    e = _PoolEmitter(k, node, x)
    b, f = e.b, e.f
    with e.planes() as plane:
        source, target = e.plane(x, plane, False), e.plane(node, plane, True)
        with for_range(b, i64(e.ho), "p") as p:
            row = e.at(target, b.mul(p, i64(e.wo)), "out_row")
            with e.columns("init") as q:
                e.put(row, q, f.const(0.0))
            e.taps(p, lambda q, pixel: e.put(row, q, f.add(e.get(row, q, "sum"), e.get(source, pixel, "x"))))
            with e.columns("divide") as q:
                e.put(row, q, f.div(e.get(row, q, "sum"), e.divisor(p, q)))


@kernel(AvgPool2DGrad, workspace=_one_row)
def _avg_pool2d_grad(k, node):
    """dx = 0; per output row: g / divisor added into every pixel of the window."""
    (g,) = node.inputs
    e = _PoolEmitter(k, node, node)
    b, f = e.b, e.f
    shares = k.workspace(node)
    with e.planes() as plane:
        grads, target = e.plane(g, plane, True), e.plane(node, plane, False)
        e.zero(target, e.h * e.w)
        with for_range(b, i64(e.ho), "p") as p:
            g_row = e.at(grads, b.mul(p, i64(e.wo)), "g_row")
            with e.columns("share") as q:
                e.put(shares, q, f.div(e.get(g_row, q, "g"), e.divisor(p, q)))
            e.taps(p, lambda q, pixel: e.put(target, pixel, f.add(e.get(target, pixel, "dx"), e.get(shares, q, "s"))))
