"""Convolution kernels: drug's own (gemm.CONV_SYMBOL, FILTER_SYMBOL: a GEMM that reads the padded
image through a table of tap offsets) for float32 with stride 1 along rows, else im2col / col2im
around one GEMM per chunk of images; and padding by index maps (each padded position reads the
row or column `ops.conv.pad_index` names).

Images (or chunks of them) are tasks on the thread pool: a thread does a chunk's im2col, GEMM and col2im
in its own column matrix (the workspace holds one per thread), so that the copies run on every
thread and a step has one parallel job per convolution rather than one per GEMM. The filter
gradient sums over images: each of a fixed number of tasks sums a fixed range of chunks into
its own partial sum, and the partial sums are added in task order, so the result does not
depend on which thread ran what."""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from llvmlite import ir

from ....ops.conv import Conv2D, Conv2DBias, Conv2DGradFilter, ConvGeometry, ConvTranspose2D, Pad, PadGrad
from .. import parallel
from ..gemm import conv_tile_pixels, filter_scratch
from ..irutil import I64, PTR, VOID, declared, for_range, i64, llvm_type
from ..lowering import kernel
from ..threads import thread_count, thread_slots

CHUNK_COLUMNS = 512  # GEMMs narrower than this are inefficient: put small images side by side
CHUNK_BYTES = 1 << 20  # but keep a chunk's column matrix (im2col writes it, the GEMM reads it) in cache
PAD_TASK_ELEMENTS, PAD_MAX_TASKS = 1 << 15, 16  # padding's tasks: ranges of planes
FILTER_TASKS = 16  # the filter gradient's partial sums (more tasks than threads, a bounded workspace)
BANDS_PER_THREAD = 2  # a small batch's images are cut into bands of output rows: tasks per thread
BAND_MIN_WORK = 1 << 20  # multiply-adds of a band at least (its GEMM packs the filter again)
# ... of a band of drug's own kernel, which packs nothing: enough to pay for a task of the pool
# (a few microseconds), so that the small first layer of a CNN at batch 1 runs on every core too
DIRECT_BAND_MIN_WORK = 1 << 17
DIRECT_FILTER_MIN_TAPS = 8  # (channel, kernel row, kernel column) taps of a group, for the direct filter gradient
DIRECT_MIN_WIDTH = 8  # output columns: half a vector of the widest registers (AVX-512), which then spans 3 rows at most


@dataclass(frozen=True)
class _Geometry(ConvGeometry):
    """A convolution's GEMM layout here: a chunk of images side by side, column matrix
    (C*KH*KW, chunk*HO*WO), staging matrix (O, chunk*HO*WO); a group's rows of each are contiguous
    blocks, so each group is one GEMM on sub-matrices."""

    @property
    def image_size(self) -> int:
        return self.channels * self.in_hw[0] * self.in_hw[1]

    @property
    def chunk(self) -> int:
        """Images per GEMM. With one, the GEMM reads and writes the NCHW images themselves; more
        need the staging matrix (copies), worth it when images are small."""
        wanted = -(-CHUNK_COLUMNS // self.pixels)
        return max(1, min(wanted, CHUNK_BYTES // (self.rows * self.pixels * self.itemsize)))

    @property
    def ld(self) -> int:
        """Row stride of the column and staging matrices."""
        return self.chunk * self.pixels

    @property
    def matrices_size(self) -> int:
        """Elements of the column matrix and (for chunks of several images) the staging matrix."""
        return (self.rows + (self.outs if self.chunk > 1 else 0)) * self.ld

    def workspace(self, extra: int = 0):
        """One column (and staging) matrix per thread, then `extra` elements."""
        return (thread_slots() * self.matrices_size + extra,), self.dtype

    def chunk_count(self, b: ir.IRBuilder, images: ir.Value) -> ir.Value:
        return b.udiv(b.add(images, i64(self.chunk - 1)), i64(self.chunk), name="chunks")

    def valid_columns(self, j: int) -> tuple[int, int]:
        """[lo, hi): the output columns q whose input column q*sw + j*dw - left lies inside the
        image for kernel column j; the others read padding."""
        w, sw, dw, left, wo = self.in_hw[1], self.stride[1], self.dilation[1], self.pads[1][0], self.out_hw[1]
        lo = max(0, -(-(left - j * dw) // sw))
        hi = min(wo, max(lo, (w - 1 + left - j * dw) // sw + 1))
        return lo, hi


class _ConvEmitter:
    """IR for one task of a convolution kernel: im2col/col2im into this thread's column matrix
    (in the workspace), copies through its staging matrix, GEMM calls (one per group)."""

    def __init__(self, t, node, geo: _Geometry, images: ir.Value, matrices: int | None = None):
        self.k, self.b, self.geo, self.real = t, t.b, geo, llvm_type(geo.dtype)
        self.images = images  # in the batch (a static batch axis need not be the run-time batch)
        size = geo.matrices_size if matrices is None else matrices  # each thread's share of the workspace
        offset = self.b.mul(t.thread(), i64(size), name="thread_matrices")
        self.columns = self.at(t.workspace(node), offset, "columns")
        self.staging = None if geo.chunk == 1 else self.at(self.columns, i64(geo.rows * geo.ld), "staging")

    def at(self, pointer: ir.Value, offset: ir.Value, name: str) -> ir.Value:
        return self.b.gep(pointer, [offset], source_etype=self.real, inbounds=True, name=name)

    def image(self, node, index: ir.Value, name: str) -> ir.Value:
        """Pointer to image `index` of an NCHW node."""
        size = int(np.prod(node.shape[1:]))
        return self.at(self.k.ptr(node), self.b.mul(index, i64(size), name=f"{name}_offset"), name)

    def width(self, count: ir.Value) -> ir.Value:
        return self.b.mul(count, i64(self.geo.pixels), name="gemm_width")

    def chunk(self, index: ir.Value) -> tuple[ir.Value, ir.Value]:
        """Chunk `index` of the batch: (first image, images in it)."""
        b, chunk = self.b, self.geo.chunk
        first = b.mul(index, i64(chunk), name="first")
        if chunk == 1:
            return first, i64(1)
        left = b.sub(self.images, first, name="left")
        return first, b.select(b.icmp_signed("<", left, i64(chunk)), left, i64(chunk), name="count")

    @contextmanager
    def groups(self):
        """Loop over the groups; yields a function giving a pointer to the group's block of a
        matrix from the matrix and the block's size in elements. One group: no loop."""
        b = self.b
        if self.geo.groups == 1:
            yield lambda pointer, size, name: pointer
            return
        stacksave = declared(b.module, "llvm.stacksave.p0", PTR, [])
        stackrestore = declared(b.module, "llvm.stackrestore.p0", VOID, [PTR])
        with for_range(b, i64(self.geo.groups), "group") as group:
            stack = b.call(stacksave, [], name="stack")  # the GEMM's argument frame, freed per group

            def block(pointer, size, name):
                return self.at(pointer, b.mul(group, size if isinstance(size, ir.Value) else i64(size)), name)

            yield block
            b.call(stackrestore, [stack])

    def gemm(self, trans_a, trans_b, m, n, depth, a, lda, b_, ldb, c, ldc=None, beta=0.0):
        """`k.gemm` in the kernel's dtype; int sizes become constants; ldc defaults to the chunk stride."""
        m, n, depth, lda, ldb, ldc = (
            i64(v) if isinstance(v, int) else v for v in (m, n, depth, lda, ldb, self.geo.ld if ldc is None else ldc)
        )
        self.k.gemm(self.geo.dtype, trans_a, trans_b, m, n, depth, a, lda, b_, ldb, c, ldc, beta=beta)

    def zero(self, pointer: ir.Value, nbytes: ir.Value) -> None:
        _zero(self.b, pointer, nbytes)

    def staged(self, images: ir.Value, count: ir.Value) -> ir.Value:
        """`count` NCHW images (O, HO*WO) as one (O, count*HO*WO) GEMM operand."""
        if self.staging is None:
            return images
        self.restage(images, count, to_images=False)
        return self.staging

    def restage(self, images: ir.Value, count: ir.Value, to_images: bool) -> None:
        """Copy rows between `count` NCHW images (O, HO*WO) and the staging matrix (O, count*HO*WO)."""
        b, geo = self.b, self.geo
        memcpy = b.module.declare_intrinsic("llvm.memcpy", [PTR, PTR, I64])
        with for_range(b, count, "image") as j:
            with for_range(b, i64(geo.outs), "o") as o:
                row = b.add(b.mul(j, i64(geo.outs)), o, name="image_row")
                image_row = self.at(images, b.mul(row, i64(geo.pixels)), "image_row_ptr")
                staged = b.add(b.mul(o, i64(geo.ld)), b.mul(j, i64(geo.pixels)), name="staged_row")
                staged_row = self.at(self.staging, staged, "staged_row_ptr")
                dst, src = (image_row, staged_row) if to_images else (staged_row, image_row)
                b.call(memcpy, [dst, src, i64(geo.pixels * geo.itemsize), ir.Constant(ir.IntType(1), 0)])

    def im2col(self, node, first: ir.Value, count: ir.Value, adjoint: bool = False, rows=None) -> None:
        """columns[(c, i, j), (n, p, q)] = node[first + n, c, p*sh + i*dh - top, q*sw + j*dw - left],
        zero where that pixel is padding; the adjoint (col2im) adds the columns back into the
        images instead (padding takes nothing). Kernel columns j are unrolled, so the padded ends
        of each row segment are known statically and the copy in between has no test. `rows`:
        only output rows p in [lo, hi) (a band of one image), else all of them."""
        b, geo = self.b, self.geo
        h, (kh, kw), sh, dh, (ho, wo) = geo.in_hw[0], geo.k_hw, geo.stride[0], geo.dilation[0], geo.out_hw
        (top, bottom), _ = geo.pads
        lo, hi = rows or (i64(0), i64(ho))
        with for_range(b, count, "image") as n:
            image = self.image(node, b.add(first, n, name="image_index"), "image")
            block = self.at(self.columns, b.mul(n, i64(geo.pixels), name="block_offset"), "block")
            with for_range(b, i64(geo.channels), "c") as c:
                with for_range(b, i64(kh), "ki") as i:
                    with for_range(b, hi, "p", start=lo) as p:
                        y = b.sub(b.add(b.mul(p, i64(sh)), b.mul(i, i64(dh))), i64(top), name="y")
                        for j in range(kw):
                            row = b.add(b.mul(b.add(b.mul(c, i64(kh)), i), i64(kw)), i64(j), name="column_row")
                            target = b.add(b.mul(row, i64(geo.ld)), b.mul(p, i64(wo)), name="column_offset")
                            segment = self.at(block, target, "column_part")
                            if top == 0 and bottom == 0:
                                self._row_segment(image, c, y, j, segment, adjoint)
                                continue
                            inside = b.and_(b.icmp_signed(">=", y, i64(0)), b.icmp_signed("<", y, i64(h)), name="in")
                            with b.if_else(inside) as (copy, blank):
                                with copy:
                                    self._row_segment(image, c, y, j, segment, adjoint)
                                with blank:
                                    if not adjoint:  # a padding row: zeros (its adjoint adds nothing)
                                        self.zero(segment, i64(wo * geo.itemsize))

    def _row_segment(self, image, c, y, j: int, segment, adjoint: bool) -> None:
        """One output row's entries for kernel tap column j: padding columns at both ends (zeros),
        the pixels of input row y in between, stride sw apart."""
        b, geo = self.b, self.geo
        (h, w), sw, dw, left, wo = geo.in_hw, geo.stride[1], geo.dilation[1], geo.pads[1][0], geo.out_hw[1]
        lo, hi = geo.valid_columns(j)
        if not adjoint:
            for start, stop in ((0, lo), (hi, wo)):
                if stop > start:
                    self.zero(self.at(segment, i64(start), "pad_columns"), i64((stop - start) * geo.itemsize))
        if hi <= lo:
            return
        row_start = b.add(b.mul(b.add(b.mul(c, i64(h)), y), i64(w)), i64(j * dw - left), name="image_offset")
        image_row = self.at(image, row_start, "image_row")
        with for_range(b, i64(hi), "q", start=i64(lo)) as q:
            pixel = self.at(image_row, b.mul(q, i64(sw), name="x"), "pixel")
            entry = self.at(segment, q, "entry")
            if adjoint:
                total = b.fadd(b.load(pixel, typ=self.real, name="old"), b.load(entry, typ=self.real, name="add"),
                               name="sum")  # fmt: skip
                b.store(total, pixel)
            else:
                b.store(b.load(pixel, typ=self.real, name="value"), entry)


def _zero(b: ir.IRBuilder, pointer: ir.Value, nbytes: ir.Value) -> None:
    memset = b.module.declare_intrinsic("llvm.memset", [PTR, I64])
    b.call(memset, [pointer, ir.Constant(ir.IntType(8), 0), nbytes, ir.Constant(ir.IntType(1), 0)])


def _pad_source(b: ir.IRBuilder, position: ir.Value, n: int, lo: int, mode: str, name: str):
    """`pad_index` in IR: the source row (or column) of a padded position, and for zeros mode an i1
    telling whether it has one (None: every position has a source)."""
    index = b.sub(position, i64(lo), name=f"{name}_index")
    if mode == "zeros":
        inside = b.and_(b.icmp_signed(">=", index, i64(0)), b.icmp_signed("<", index, i64(n)), name=f"{name}_inside")
        return index, inside
    if mode == "replicate":
        low = b.select(b.icmp_signed("<", index, i64(0)), i64(0), index, name=f"{name}_low")
        return b.select(b.icmp_signed(">", low, i64(n - 1)), i64(n - 1), low, name=f"{name}_source"), None
    mirrored = b.select(b.icmp_signed("<", index, i64(0)), b.neg(index), index, name=f"{name}_mirrored")
    folded = b.sub(i64(2 * (n - 1)), mirrored, name=f"{name}_folded")
    return b.select(b.icmp_signed(">", mirrored, i64(n - 1)), folded, mirrored, name=f"{name}_source"), None


Range = tuple[ir.Value, ir.Value]


def _emit_padding(k, op: Pad | PadGrad, small: ir.Value, padded: ir.Value, small_node, adjoint: bool,
                  planes: Range, rows: Range | None = None) -> None:  # fmt: skip
    """Pad: padded[p, q] = small[rows[p], cols[q]] (0 where there is no source), per (n, c) plane
    in the range `planes`, the interior of each row a contiguous copy; only padded rows p in
    `rows` [start, stop) when given (Pad only). Adjoint (PadGrad): small = 0, then
    small[rows[p], cols[q]] += padded[p, q]."""
    b, real, itemsize = k.b, llvm_type(small_node.dtype), small_node.dtype.itemsize
    (top, _), (left, _) = op.pads
    (h, w), (hp, wp) = op.in_hw, op.padded_hw()
    zeros = op.mode == "zeros"
    rows = rows or (i64(0), i64(hp))

    def at(pointer, offset, name):
        return b.gep(pointer, [offset], source_etype=real, inbounds=True, name=name)

    def columns(small_row, padded_row, start, stop, name):
        """Padded columns [start, stop) and their sources: the row's interior or a border."""
        border = name != "interior"
        if stop <= start or (zeros and border and adjoint):
            return
        if zeros and border:  # no sources
            _zero(b, at(padded_row, i64(start), f"{name}_start"), i64((stop - start) * itemsize))
            return
        with for_range(b, i64(stop), name, start=i64(start)) as q:
            if border:
                source, _ = _pad_source(b, q, w, left, op.mode, "col")
            else:
                source = b.sub(q, i64(left), name="col_source")
            pixel, entry = at(small_row, source, "pixel"), at(padded_row, q, "entry")
            if adjoint:
                total = b.fadd(b.load(pixel, typ=real, name="old"), b.load(entry, typ=real, name="add"), name="sum")
                b.store(total, pixel)
            else:
                b.store(b.load(pixel, typ=real, name="value"), entry)

    def row(small_plane, padded_row, p):
        source, _ = _pad_source(b, p, h, top, op.mode, "row")
        small_row = at(small_plane, b.mul(source, i64(w), name="small_row_offset"), "small_row")
        columns(small_row, padded_row, 0, left, "left")
        columns(small_row, padded_row, left, left + w, "interior")
        columns(small_row, padded_row, left + w, wp, "right")

    with for_range(b, planes[1], "plane", start=planes[0]) as plane:
        small_plane = at(small, b.mul(plane, i64(h * w), name="small_plane_offset"), "small_plane")
        padded_plane = at(padded, b.mul(plane, i64(hp * wp), name="padded_plane_offset"), "padded_plane")
        if adjoint:
            _zero(b, small_plane, i64(h * w * itemsize))
        with for_range(b, rows[1], "row", start=rows[0]) as p:
            padded_row = at(padded_plane, b.mul(p, i64(wp), name="padded_row_offset"), "padded_row")
            if zeros:  # rows without a source are zero (Pad) or add nothing (PadGrad)
                _, inside = _pad_source(b, p, h, top, op.mode, "row")
                with b.if_else(inside) as (copy, blank):
                    with copy:
                        row(small_plane, padded_row, p)
                    with blank:
                        if not adjoint:
                            _zero(b, padded_row, i64(wp * itemsize))
            else:
                row(small_plane, padded_row, p)


def _forward_geometry(node) -> _Geometry:
    x, w = node.inputs[:2]
    return _Geometry.of(x.shape, w.shape, node.op, node.dtype)


def _transpose_geometry(node) -> tuple[_Geometry, _Geometry | None]:
    """A ConvTranspose2D's geometry, and that of the convolution drug's kernel runs for it (None: col2im)."""
    _, w = node.inputs
    geo = _Geometry.of(node.shape, w.shape, node.op, node.dtype)
    adjoint = _adjoint(geo)
    return geo, adjoint if adjoint is not None and _direct(adjoint) else None


def _filter_geometry(node) -> _Geometry:
    x, _ = node.inputs
    return _Geometry.of(x.shape, node.shape, node.op, node.dtype)


def _conv_workspace(node):
    """im2col's column matrix (and staging matrix) for the forward; drug's convolution needs a
    padded copy of an image per thread, and only for zero padding."""
    geo = _forward_geometry(node)
    if _direct(geo):
        return (thread_slots() * _padded_size(geo) if _padded(geo) else 1,), geo.dtype
    return geo.workspace()


def _direct(geo: _Geometry) -> bool:
    """Whether drug's convolution kernel (gemm.CONV_SYMBOL: no column matrix) runs this one:
    float32, stride 1 along rows, output rows at least DIRECT_MIN_WIDTH wide."""
    return geo.dtype == np.float32 and geo.stride[1] == 1 and geo.out_hw[1] >= DIRECT_MIN_WIDTH


def _fits_direct(node) -> bool:
    """Whether drug's convolution kernel runs this Conv2D or Conv2DBias node."""
    return _direct(_forward_geometry(node))


def _padded(geo: _Geometry) -> bool:
    return any(p for pair in geo.pads for p in pair)


def _padded_hw(geo: _Geometry) -> tuple[int, int]:
    (top, bottom), (left, right) = geo.pads
    return geo.in_hw[0] + top + bottom, geo.in_hw[1] + left + right


def _padded_size(geo: _Geometry) -> int:
    return geo.channels * math.prod(_padded_hw(geo))


def _zero_padded(k, x, image: ir.Value, padded: ir.Value, geo: _Geometry, rows=None) -> ir.Value:
    """`padded` (returned) = image of node x with `geo`'s zero padding around each channel (only
    its rows in `rows` [start, stop) when given)."""
    _emit_padding(k, Pad(geo.pads, "zeros", geo.in_hw), image, padded, x, adjoint=False,
                  planes=(i64(0), i64(geo.channels)), rows=rows)  # fmt: skip
    return padded


def _tap_offsets(k, geo: _Geometry) -> ir.Value:
    """Pointer to the first entry of a constant table: per patch entry (channel, kernel row, kernel column) of a
    group, the element offset of the pixel it reads for output pixel (0, 0) of the padded image."""
    hp, wp = _padded_hw(geo)
    (kh, kw), (dh, dw) = geo.k_hw, geo.dilation
    values = [c * hp * wp + i * dh * wp + j * dw for c in range(geo.channels // geo.groups) for i in range(kh)
              for j in range(kw)]  # fmt: skip
    name = f"conv_taps.{geo.channels // geo.groups}x{kh}x{kw}.{hp}x{wp}.d{dh}x{dw}"
    module = k.b.module
    if name not in module.globals:
        table = ir.GlobalVariable(module, ir.ArrayType(I64, len(values)), name)
        table.initializer = ir.Constant(ir.ArrayType(I64, len(values)), values)
        table.global_constant, table.linkage = True, "internal"
    table = module.globals[name]
    return k.b.gep(table, [i64(0), i64(0)], source_etype=table.value_type, name="taps")


def _direct_conv(k, node, x, weights, geo: _Geometry, padded_at: int = 0, epilogue=None) -> None:
    """node = the convolution `geo` of x by the filter at `weights(ctx)`, through drug's kernel:
    per image, or band of output pixels of an image (a small batch), the image padded into this
    thread's part of the workspace from element `padded_at` (zero padding only; a valid
    convolution reads the image where it is), then per group one call over the band's pixels.
    `epilogue` = (bias(ctx), floor): the kernel finishes its tiles, max(out + bias, floor)."""
    hp, wp = _padded_hw(geo)
    (ho, wo), sh = geo.out_hw, geo.stride[0]
    bands = _bands(k.b, geo, k.dims(x)[0], by_images=True)
    with k.tasks(k.b.mul(k.dims(x)[0], bands), "image") as (t, index):
        b = t.b
        bands = _bands(b, geo, t.dims(x)[0], by_images=True)
        e = _ConvEmitter(t, node, geo, t.dims(x)[0], matrices=0)
        n, band = b.udiv(index, bands, name="image_index"), b.urem(index, bands, name="band")
        # a band is a range of whole tiles of pixels (the last one cut at the image's end)
        tile = conv_tile_pixels(geo.group_outs, wo, geo.group_rows)
        tiles = -(-ho * wo // tile)
        lo = b.mul(b.udiv(b.mul(band, i64(tiles)), bands), i64(tile), name="q_lo")
        hi = b.mul(b.udiv(b.mul(b.add(band, i64(1)), i64(tiles)), bands), i64(tile))
        hi = b.select(b.icmp_unsigned("<", hi, i64(ho * wo)), hi, i64(ho * wo), name="q_hi")
        first_row = b.udiv(lo, i64(wo), name="first_row")
        end_row = b.udiv(b.add(hi, i64(wo - 1)), i64(wo), name="end_row")
        image = e.image(x, n, "image")
        if _padded(geo):  # only the padded rows the band's output rows read
            mine = b.add(i64(padded_at), b.mul(t.thread(), i64(_padded_size(geo))), name="padded_offset")
            reach = (geo.k_hw[0] - 1) * geo.dilation[0] + 1
            rows = b.mul(first_row, i64(sh)), b.add(b.mul(b.sub(end_row, i64(1)), i64(sh)), i64(reach))
            image = _zero_padded(t, x, image, e.at(t.workspace(node), mine, "padded"), geo, rows)
        taps = _tap_offsets(t, geo)
        out = e.image(node, n, "out")
        group_image, group_filter = (geo.channels // geo.groups) * hp * wp, geo.group_outs * geo.group_rows
        bias, floor = (None, -math.inf) if epilogue is None else (epilogue[0](t), epilogue[1])
        with e.groups() as block:
            group_bias = ir.Constant(PTR, None) if bias is None else block(bias, geo.group_outs, "bias_group")
            t.conv(geo.group_outs, lo, hi, geo.group_rows, block(weights(t), group_filter, "w_group"),
                   geo.group_rows, block(image, group_image, "image_group"), taps, wo, sh * wp,
                   block(out, geo.group_outs * geo.pixels, "out_group"), geo.pixels, group_bias,
                   ir.Constant(ir.FloatType(), floor))  # fmt: skip


def _adjoint(geo: _Geometry) -> _Geometry | None:
    """The input gradient of a convolution with stride 1 as a convolution of its own: of the
    output gradient, padded by (dilated kernel size - 1 - padding) on each side, by the filter
    flipped in both spatial axes with input and output channels swapped (per group). None for
    strides, or padding wider than the kernel reaches (a crop, not a padding)."""
    if geo.stride != (1, 1):
        return None
    pads = tuple((d * (k - 1) - lo, d * (k - 1) - hi) for (lo, hi), k, d in zip(geo.pads, geo.k_hw, geo.dilation))
    if any(p < 0 for pair in pads for p in pair):
        return None
    return _Geometry(geo.outs, geo.out_hw, geo.k_hw, (1, 1), geo.channels, geo.dtype, pads, geo.dilation, geo.groups)


def _flip_filter(k, w, flipped: ir.Value, geo: _Geometry) -> None:
    """flipped[c][o'][KH-1-i][KW-1-j] = w[o][c'][i][j], o' and c' the indices within the group of
    output channel o and input channel c: `_adjoint`'s filter."""
    b, real = k.b, llvm_type(geo.dtype)
    (kh, kw), per_in, per_out = geo.k_hw, geo.channels // geo.groups, geo.group_outs
    taps = kh * kw
    with for_range(b, i64(geo.outs), "o") as o, for_range(b, i64(per_in), "ci") as ci:
        group, within = b.udiv(o, i64(per_out), name="group"), b.urem(o, i64(per_out), name="within")
        c = b.add(b.mul(group, i64(per_in)), ci, name="c")
        source = b.mul(b.add(b.mul(o, i64(per_in)), ci), i64(taps), name="source")
        target = b.mul(b.add(b.mul(c, i64(per_out)), within), i64(taps), name="target")
        for tap in range(taps):  # unrolled: a filter has a few dozen taps at most
            value = b.load(k.element(w, b.add(source, i64(tap))), typ=real, name="tap")
            at = b.gep(flipped, [b.add(target, i64(taps - 1 - tap))], source_etype=real, inbounds=True)
            b.store(value, at)


def _bands(b: ir.IRBuilder, geo: _Geometry, images: ir.Value, by_images: bool = False) -> ir.Value:
    """Bands each image is cut into (of output rows for im2col, of whole tiles of pixels for
    drug's kernel): one when there are images enough for every thread, else enough bands for
    BANDS_PER_THREAD tasks per thread (each a row and BAND_MIN_WORK, or DIRECT_BAND_MIN_WORK, at
    least), so that a small batch's convolution still runs on every core."""
    min_work = DIRECT_BAND_MIN_WORK if by_images else BAND_MIN_WORK
    most = min(geo.out_hw[0], geo.pixels * geo.rows * geo.outs // min_work)
    if (geo.chunk > 1 and not by_images) or most < 2:  # small images go side by side instead; small work stays whole
        return i64(1)
    wanted = BANDS_PER_THREAD * thread_count()
    few = b.icmp_unsigned("<", images, i64(wanted), name="few_images")
    some = b.icmp_unsigned(">", images, i64(0))
    per_image = b.udiv(i64(wanted), b.select(b.and_(few, some), images, i64(wanted)), name="bands_wanted")
    return b.select(b.icmp_unsigned(">", per_image, i64(most)), i64(most), per_image, name="bands")


@kernel(Conv2D, workspace=_conv_workspace, uses_blas=True, calls_conv=_fits_direct)
def _conv2d(k, node):
    """drug's convolution kernel where `_direct`; else per chunk of images (or band of output rows
    of one image): im2col side by side, then per group one GEMM out[g] = w[g] (O/G, C/G*KH*KW) @
    columns[g]."""
    x, w = node.inputs
    geo = _forward_geometry(node)
    if _direct(geo):
        _direct_conv(k, node, x, lambda t: t.ptr(w), geo)
        return
    bands = _bands(k.b, geo, k.dims(x)[0])
    with k.tasks(k.b.mul(geo.chunk_count(k.b, k.dims(x)[0]), bands), "chunk") as (t, index):
        b = t.b
        e = _ConvEmitter(t, node, geo, t.dims(x)[0])
        bands = _bands(b, geo, t.dims(x)[0])
        first, count = e.chunk(b.udiv(index, bands, name="chunk_index"))
        band = b.urem(index, bands, name="band")
        ho, wo = geo.out_hw
        lo = b.udiv(b.mul(band, i64(ho)), bands, name="lo")
        hi = b.udiv(b.mul(b.add(band, i64(1)), i64(ho)), bands, name="hi")
        e.im2col(x, first, count, rows=(lo, hi))
        columns = b.mul(lo, i64(wo), name="band_columns")  # 0 unless the image is cut into bands
        out = e.image(node, first, "out")
        product = out if e.staging is None else e.staging
        with e.groups() as block:
            e.gemm(False, False, geo.group_outs, b.mul(b.sub(hi, lo), b.mul(count, i64(wo))), geo.group_rows,
                   block(t.ptr(w), geo.group_outs * geo.group_rows, "w_group"), geo.group_rows,
                   e.at(block(e.columns, geo.group_rows * geo.ld, "columns_group"), columns, "band_in"), geo.ld,
                   e.at(block(product, geo.group_outs * geo.ld, "out_group"), columns, "band_out"))  # fmt: skip
        if e.staging is not None:
            e.restage(out, count, to_images=True)


@kernel(Conv2DBias, workspace=_conv_workspace, supports=_fits_direct, uses_blas=True, calls_conv=_fits_direct)
def _conv2d_bias(k, node):
    """drug's convolution kernel, finishing each tile with the bias and the activation as it
    stores it (only where `_direct`: elsewhere the epilogue pass leaves conv2d, add and relu)."""
    x, w, bias = node.inputs
    floor = 0.0 if node.op.activation == "relu" else -math.inf
    _direct_conv(k, node, x, lambda t: t.ptr(w), _forward_geometry(node), epilogue=(lambda t: t.ptr(bias), floor))


def _conv_transpose_workspace(node):
    geo, adjoint = _transpose_geometry(node)
    if adjoint is not None:
        padded = thread_slots() * _padded_size(adjoint) if _padded(adjoint) else 0
        return (_flipped_size(geo) + padded,), geo.dtype
    return geo.workspace()


def _flipped_size(geo: _Geometry) -> int:
    """Elements of `_flip_filter`'s copy of the filter."""
    return geo.outs * geo.group_rows


@kernel(
    ConvTranspose2D,
    workspace=_conv_transpose_workspace,
    uses_blas=True,
    calls_conv=lambda node: _transpose_geometry(node)[1] is not None,
)
def _conv_transpose2d(k, node):
    """With stride 1 and wide enough images, drug's convolution of the padded gradient by the
    flipped filter (`_adjoint`). Else per chunk of images: per group one GEMM columns[g] =
    w[g]^T (C/G*KH*KW, O/G) @ g[g], then col2im adds each image's columns into its (zeroed)
    output."""
    g, w = node.inputs
    geo, adjoint = _transpose_geometry(node)
    if adjoint is not None:
        _flip_filter(k, w, k.workspace(node), geo)
        _direct_conv(k, node, g, lambda t: t.workspace(node), adjoint, padded_at=_flipped_size(geo))
        return
    with k.tasks(geo.chunk_count(k.b, k.dims(g)[0]), "chunk") as (t, index):
        e = _ConvEmitter(t, node, geo, t.dims(g)[0])
        first, count = e.chunk(index)
        grads = e.staged(e.image(g, first, "g"), count)
        with e.groups() as block:
            e.gemm(True, False, geo.group_rows, e.width(count), geo.group_outs,
                   block(t.ptr(w), geo.group_outs * geo.group_rows, "w_group"), geo.group_rows,
                   block(grads, geo.group_outs * geo.ld, "g_group"), geo.ld,
                   block(e.columns, geo.group_rows * geo.ld, "columns_group"))  # fmt: skip
        e.zero(e.image(node, first, "dx"), e.b.mul(count, i64(geo.image_size * geo.itemsize), name="dx_bytes"))
        e.im2col(node, first, count, adjoint=True)


def _conv_grad_filter_workspace(node):
    geo = _filter_geometry(node)
    partials = FILTER_TASKS * geo.group_rows * geo.outs  # the tasks' transposed partial sums
    if _direct_filter(geo):
        return (thread_slots() * _filter_scratch(geo) + partials,), geo.dtype
    return geo.workspace(extra=partials)


def _direct_filter(geo: _Geometry) -> bool:
    """Whether drug's filter-gradient kernel (gemm.FILTER_SYMBOL) runs this one: float32, stride 1
    along rows (its vectors run along the output channels: any image width will do), and taps
    enough per group to fill most of a tile's rows (a one-channel 2 x 2 filter's 4 taps would
    leave most of them idle)."""
    return geo.dtype == np.float32 and geo.stride[1] == 1 and geo.group_rows >= DIRECT_FILTER_MIN_TAPS


def _filter_scratch(geo: _Geometry) -> int:
    """A thread's scratch for the direct filter gradient: the padded image, then the kernel's own
    (a block of the output gradient transposed)."""
    return (_padded_size(geo) if _padded(geo) else 0) + filter_scratch(geo.group_outs, geo.out_hw[1])


def _filter_tasks(b: ir.IRBuilder, geo: _Geometry, images: ir.Value) -> tuple[ir.Value, ir.Value, ir.Value]:
    """(chunks, chunks per task, tasks) of a filter gradient: at most FILTER_TASKS tasks, at least one
    (task 0 zeroes partial sum 0 even for an empty batch). The direct kernel's chunks are images."""
    chunks = images if _direct_filter(geo) else geo.chunk_count(b, images)
    per_task = b.udiv(b.add(chunks, i64(FILTER_TASKS - 1)), i64(FILTER_TASKS))
    per_task = b.select(b.icmp_unsigned("<", per_task, i64(1)), i64(1), per_task, name="chunks_per_task")
    tasks = b.udiv(b.add(chunks, b.sub(per_task, i64(1))), per_task)
    return chunks, per_task, b.select(b.icmp_unsigned("<", tasks, i64(1)), i64(1), tasks, name="tasks")


@kernel(
    Conv2DGradFilter,
    workspace=_conv_grad_filter_workspace,
    uses_blas=True,
    calls_conv=lambda node: _direct_filter(_filter_geometry(node)),
)
def _conv2d_grad_filter(k, node):
    """Per group, dw[g]^T (C/G*KH*KW, O/G) = sum over chunks of images of columns[g] @ g[g]^T (this
    orientation runs faster: M=C*KH*KW rather than O): task i sums its range of chunks into
    partial sum i; then the partial sums, added in order, transposed into dw. float32 with stride
    1 along rows: per image, drug's filter-gradient kernel reads the (padded) image through the
    tap offsets and the image's output gradient transposed; else im2col and beta=1 GEMMs."""
    x, g = node.inputs
    geo = _filter_geometry(node)
    b, real = k.b, llvm_type(node.dtype)
    block_size = geo.group_rows * geo.group_outs
    size = geo.groups * block_size
    direct = _direct_filter(geo)
    partials_at = i64(thread_slots() * (_filter_scratch(geo) if direct else geo.matrices_size))
    _, _, tasks = _filter_tasks(b, geo, k.dims(x)[0])

    def partial(ctx, index: ir.Value) -> ir.Value:
        offset = ctx.b.add(partials_at, ctx.b.mul(index, i64(size)), name="partial_offset")
        return ctx.b.gep(ctx.workspace(node), [offset], source_etype=real, inbounds=True, name="partial")

    def at(pointer: ir.Value, offset: ir.Value, name: str) -> ir.Value:
        return b.gep(pointer, [offset], source_etype=real, inbounds=True, name=name)

    with k.tasks(tasks, "chunks") as (t, index):
        e = _ConvEmitter(t, node, geo, t.dims(x)[0], matrices=_filter_scratch(geo) if direct else None)
        total = partial(t, index)
        e.zero(total, i64(size * geo.itemsize))
        chunks, per_task, _ = _filter_tasks(t.b, geo, e.images)
        start = t.b.mul(index, per_task, name="start")
        end = t.b.add(start, per_task)
        end = t.b.select(t.b.icmp_signed("<", end, chunks), end, chunks, name="end")
        with for_range(t.b, end, "chunk", start=start) as chunk:
            if direct:
                _direct_filter_image(t, e, x, g, chunk, total, geo)
            else:
                _im2col_filter_chunk(e, x, g, chunk, total, geo)
    first = partial(k, i64(0))
    with for_range(b, b.sub(tasks, i64(1)), "partial") as i:
        source = partial(k, b.add(i, i64(1)))
        with for_range(b, i64(size), "element") as j:
            pair = [at(p, j, "partial_entry") for p in (first, source)]
            b.store(b.fadd(*(b.load(p, typ=real) for p in pair), name="sum"), pair[0])
    with for_range(b, i64(geo.outs), "o") as o:
        group = b.udiv(o, i64(geo.group_outs), name="group")
        within = b.urem(o, i64(geo.group_outs), name="within")
        summed = at(first, b.add(b.mul(group, i64(block_size)), within, name="block_start"), "summed_block")
        with for_range(b, i64(geo.group_rows), "r") as r:
            source = at(summed, b.mul(r, i64(geo.group_outs), name="summed"), "summed_ptr")
            target = k.element(node, b.add(b.mul(o, i64(geo.group_rows)), r, name="dw_index"))
            b.store(b.load(source, typ=real, name="value"), target)


def _im2col_filter_chunk(e: _ConvEmitter, x, g, chunk: ir.Value, total: ir.Value, geo: _Geometry) -> None:
    """Add a chunk of images' part of the filter gradient into the partial sum `total`: im2col, then
    per group a beta=1 GEMM."""
    first, count = e.chunk(chunk)
    grads = e.staged(e.image(g, first, "g"), count)
    e.im2col(x, first, count)
    with e.groups() as block:
        e.gemm(False, True, geo.group_rows, geo.group_outs, e.width(count),
               block(e.columns, geo.group_rows * geo.ld, "columns_group"), geo.ld,
               block(grads, geo.group_outs * geo.ld, "g_group"), geo.ld,
               block(total, geo.group_rows * geo.group_outs, "sum_group"), ldc=geo.group_outs, beta=1.0)  # fmt: skip


def _direct_filter_image(t, e: _ConvEmitter, x, g, n: ir.Value, total: ir.Value, geo: _Geometry) -> None:
    """Add image n's part of the filter gradient into the partial sum `total`: the image padded
    into this thread's scratch, then per group one call of drug's filter-gradient kernel (which
    transposes the output gradient block by block in the rest of the scratch)."""
    hp, wp = _padded_hw(geo)
    image, scratch = e.image(x, n, "image"), e.columns
    if _padded(geo):
        image, scratch = _zero_padded(t, x, image, scratch, geo), e.at(scratch, i64(_padded_size(geo)), "transposed")
    grads, taps = e.image(g, n, "g"), _tap_offsets(t, geo)
    group_image = (geo.channels // geo.groups) * hp * wp
    with e.groups() as block:
        t.conv_filter(geo.group_rows, geo.group_outs, geo.out_hw[0], geo.out_hw[1], geo.stride[0] * wp,
                      block(image, group_image, "image_group"), taps,
                      block(grads, geo.group_outs * geo.pixels, "g_group"), geo.pixels,
                      block(total, geo.group_rows * geo.group_outs, "sum_group"), geo.group_outs, scratch)  # fmt: skip


@contextmanager
def _plane_tasks(k, small_node):
    """Tasks over ranges of the (n, c) planes: yields (task context, first plane, end plane)."""

    def plan(ctx):
        planes = ctx.b.mul(ctx.dims(small_node)[0], i64(small_node.shape[1]), name="planes")
        size = ctx.b.mul(planes, i64(int(np.prod(small_node.shape[2:]))), name="elements")
        return planes, *parallel.split(ctx.b, planes, size, PAD_TASK_ELEMENTS, PAD_MAX_TASKS, 1)

    _, _, tasks = plan(k)
    with k.tasks(tasks, "planes") as (t, index):
        planes, chunk, _ = plan(t)
        yield t, *parallel.task_range(t.b, index, chunk, planes)


@kernel(Pad)
def _pad(k, node):
    """Row by row: the interior is a contiguous copy, border columns go through the index map."""
    (x,) = node.inputs
    with _plane_tasks(k, x) as (t, first, end):
        _emit_padding(t, node.op, t.ptr(x), t.ptr(node), x, adjoint=False, planes=(first, end))


@kernel(PadGrad)
def _pad_grad(k, node):
    """Zero each output plane, then add every padded row back into the row it copied."""
    (g,) = node.inputs
    with _plane_tasks(k, node) as (t, first, end):
        _emit_padding(t, node.op, t.ptr(node), t.ptr(g), node, adjoint=True, planes=(first, end))
