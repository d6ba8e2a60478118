"""Kernels of local pooling with strides and padding (ops/pool.py).

Which taps of a window read real pixels (not padding) depends only on where the window is, so
the output rows and columns split at compile time into segments with one set of valid taps each
(the border windows and the interior). Each (image, channel) plane is computed region by region:
a loop over the region's output pixels whose body combines its fixed list of taps, with no tests,
so it vectorizes (the stride-2 loads of the taps of neighbouring windows become wide loads and
shuffles). The adjoints that add into the image (the gradients) scatter tap by tap instead:
windows overlap, so one loop over a row's windows may add twice into a pixel only if it handles
one tap."""

from __future__ import annotations

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


Window = Callable[[ir.Value, ir.Value, list[ir.Value]], ir.Value]  # (p, q, pixel offsets) -> output value


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
        op: Pooling = self.op
        (kh, kw), (sh, sw), ((top, _), (left, _)) = op.kernel, op.stride, op.pads
        self.rows = segments(self.h, kh, sh, top, self.ho)
        self.cols = segments(self.w, kw, sw, left, self.wo)

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

    def scatter(self, p: ir.Value, p_taps: tuple[int, ...], add: Callable[[ir.Value, ir.Value, int, int], ir.Value]):
        """For each valid tap (i, j) of output row p (i in p_taps), one loop over the windows q
        whose tap is valid: add(q, pixel, i, j) is added into the output image at `pixel`."""
        b = self.b
        for i in p_taps:
            for j in range(self.op.kernel[1]):
                q0 = next((s for s, _, taps in self.cols if j in taps), None)
                q1 = next((stop for _, stop, taps in reversed(self.cols) if j in taps), None)
                if q0 is None:
                    continue
                with for_range(b, i64(q1), f"s{i}_{j}", start=i64(q0)) as q:
                    yield_pixel = self.pixel(p, q, i, j)
                    self._add_into(yield_pixel, add(q, yield_pixel, i, j))

    def _add_into(self, pixel: ir.Value, value: ir.Value) -> None:
        self.put(self.target, pixel, self.f.add(self.get(self.target, pixel, "dx"), value))

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


@kernel(MaxPool2D)
def _max_pool2d(k, node):
    """out[p, q] = the max of the window's valid taps (padding never wins)."""
    (x,) = node.inputs
    e = _PoolEmitter(k, node, x)
    f = e.f
    with e.planes() as plane:
        source, target = e.plane(x, plane, False), e.plane(node, plane, True)
        for p, q, taps in e.regions():
            acc = f.const(float("-inf"))
            for i, j in taps:
                acc = f.accumulate("max", acc, e.get(source, e.pixel(p, q, i, j), "x"))
            e.put(target, e.b.add(e.b.mul(p, i64(e.wo)), q, name="out_at"), acc)


@kernel(AvgPool2D)
def _avg_pool2d(k, node):
    """out[p, q] = the sum of the window's valid taps (padding adds nothing) / its divisor."""
    (x,) = node.inputs
    e = _PoolEmitter(k, node, x)
    f = e.f
    with e.planes() as plane:
        source, target = e.plane(x, plane, False), e.plane(node, plane, True)
        for p, q, taps in e.regions():
            total = f.const(0.0)
            for i, j in taps:
                total = f.add(total, e.get(source, e.pixel(p, q, i, j), "x"))
            e.put(target, e.b.add(e.b.mul(p, i64(e.wo)), q, name="out_at"), f.div(total, e.divisor(taps)))


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


def _pooled_plane(node):
    return (node.op.out_hw[0] * node.op.out_hw[1],), node.dtype


@kernel(MaxPool2DGrad, workspace=_pooled_plane)
def _max_pool2d_grad(k, node):
    """Per plane: each window's share g / (number of its maxima), computed region by region into
    the workspace; then dx = 0 and, tap by tap, the share added into the taps that are maxima."""
    x, out, g = node.inputs
    e = _PoolEmitter(k, node, x)
    b, f = e.b, e.f
    shares = k.workspace(node)
    with e.planes() as plane:
        source, maxima, grads = e.plane(x, plane, False), e.plane(out, plane, True), e.plane(g, plane, True)
        e.target = e.plane(node, plane, False)
        for p, q, taps in e.regions():
            at = b.add(b.mul(p, i64(e.wo)), q, name="out_at")
            maximum = e.get(maxima, at, "max")
            count = f.const(0.0)
            for i, j in taps:
                count = f.add(count, f.select(e.is_max(source, e.pixel(p, q, i, j), maximum), f.const(1.0),
                                              f.const(0.0)))  # fmt: skip
            e.put(shares, at, e.share(e.get(grads, at, "g"), count))
        e.zero(e.target, e.h * e.w)
        for p0, p1, rows in e.rows:
            with for_range(b, i64(p1), f"r{p0}", start=i64(p0)) as p:

                def routed(q, pixel, i, j, p=p):
                    at = b.add(b.mul(p, i64(e.wo)), q, name="out_at")
                    hit = e.is_max(source, pixel, e.get(maxima, at, "max"))
                    return f.select(hit, e.get(shares, at, "share"), f.const(0.0))

                e.scatter(p, rows, routed)


@kernel(AvgPool2DGrad, workspace=_pooled_plane)
def _avg_pool2d_grad(k, node):
    """Per plane: g / divisor per window, region by region; then dx = 0 and, tap by tap, each
    window's share added into its pixels."""
    (g,) = node.inputs
    e = _PoolEmitter(k, node, node)
    b = e.b
    shares = k.workspace(node)
    with e.planes() as plane:
        grads = e.plane(g, plane, True)
        e.target = e.plane(node, plane, False)
        for p, q, taps in e.regions():
            at = b.add(b.mul(p, i64(e.wo)), q, name="out_at")
            e.put(shares, at, e.f.div(e.get(grads, at, "g"), e.divisor(taps)))
        e.zero(e.target, e.h * e.w)
        for p0, p1, rows in e.rows:
            with for_range(b, i64(p1), f"r{p0}", start=i64(p0)) as p:
                e.scatter(p, rows, lambda q, pixel, i, j, p=p: e.get(shares, b.add(b.mul(p, i64(e.wo)), q), "share"))
