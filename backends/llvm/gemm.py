"""drug's own single-precision GEMM, generated for the host CPU's vector registers.

It has `cblas_sgemm`'s signature (row-major; the integer width of the BLAS numpy loaded), so it
takes the BLAS's place in the runtime's table and every call site (matrix products, the GEMMs of
convolutions, the tasks of a shared-out GEMM) uses it unchanged. The method is GotoBLAS's and
BLIS's, cut to the sizes drug's tasks have: op(B) is packed in blocks of `depth` x `column_block`
(they stay in L2) into panels one tile wide, and a micro-kernel keeps a tile of C in registers
while it runs down the depth: per step one broadcast of A and a vector load of B per register
across. A is read in place (a tile's rows are a few streams, or one when transposed), so only B
is ever copied, and not even B when A has at most `unpacked_rows` rows, nor a B packed once
ahead of time (`PACKED_SYMBOL`: a program's constant weights, prepack.py, and the B of a GEMM
shared out by blocks of rows, packed once for all of them by `PACK_SYMBOL`). Edge tiles use the same
micro-kernel: rows past the edge repeat the last row, columns past it are masked. Products of
fewer rows than the main tile (small batches, a batch of one) have tiles of 1, 2 or 4 rows.

Why not the BLAS: it is written for large square problems; drug's steps call it on a few dozen to
a few hundred rows per task, where its packing of both operands and its blocking leave a tenth to
a half of the core's multiply-add rate unused. Shapes this GEMM does not gain on (a column
vector, a row times a transposed B, an empty depth, column-major order) go to the BLAS, whose
address the runtime stores in `FALLBACK_SYMBOL` before the first call.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import functools
import math
import os
from dataclasses import dataclass

from llvmlite import ir

from . import jit
from .blas import CBLAS_NO_TRANS, CBLAS_ROW_MAJOR, CBLAS_TRANS, Gemm
from .irutil import I32, I64, PTR, VOID, Callee, aligned, declared, for_range, i64

__all__ = [
    "Tile",
    "Tiling",
    "host_tiling",
    "build_sgemm",
    "build_sconv",
    "conv_tile_pixels",
    "filter_scratch",
    "compile_kernels",
    "prebuild_kernels",
    "runtime_kernels",
    "RuntimeKernels",
    "CONV_SYMBOL",
    "CONV_TYPE",
    "FILTER_SYMBOL",
    "FILTER_TYPE",
    "ENTRY_SYMBOL",
    "FALLBACK_SYMBOL",
    "PACKED_SYMBOL",
    "PACK_SYMBOL",
    "prepacked_panel",
]

ENTRY_SYMBOL = "drug_sgemm"
F32 = ir.FloatType()
CONV_SYMBOL = "drug_sconv"  # convolutions with stride 1 along rows, read from the image (conv_entry)
CONV_ARGS = [("m", I64), ("q.lo", I64), ("q.hi", I64), ("depth", I64), ("w", PTR), ("ldw", I64), ("image", PTR),
             ("offsets", PTR), ("wo", I64), ("row_stride", I64), ("c", PTR), ("ldc", I64), ("bias", PTR),
             ("floor", F32)]  # fmt: skip
CONV_TYPE = ir.FunctionType(VOID, [t for _, t in CONV_ARGS])
FILTER_SYMBOL = "drug_sconv_filter"  # their filter gradients (filter_entry)
FILTER_ARGS = [("k", I64), ("o", I64), ("rows", I64), ("wo", I64), ("row_stride", I64), ("image", PTR),
               ("offsets", PTR), ("g", PTR), ("ldg", I64), ("c", PTR), ("ldc", I64), ("scratch", PTR)]  # fmt: skip
FILTER_TYPE = ir.FunctionType(VOID, [t for _, t in FILTER_ARGS])
FALLBACK_SYMBOL = "drug_sgemm.fallback"  # the BLAS's cblas_sgemm, for the shapes above
PACKED_SYMBOL = "drug_sgemm_packed"  # a GEMM whose B was packed ahead of time (packed_entry)
PACK_SYMBOL = "drug_sgemm_pack"  # op(B) into the panels PACKED_SYMBOL reads, at run time (pack_entry)
PREPACKED = 2  # `blocked`'s b.trans for such a B (0: B in rows, 1: transposed)
ALIGN = 64  # packed panels start on a cache line: vector loads of B never split one


@dataclass(frozen=True)
class Tile:
    """The block of C a micro-kernel call keeps in registers: `rows` x `vectors` registers."""

    rows: int
    vectors: int


@dataclass(frozen=True)
class ChannelTile:
    """The tile of the convolution by channels (`conv_channels_micro_kernel`): at most `pixels`
    pixels of an output row (28 accumulators with 2 vectors: 14 pixels) by `vectors` vectors of
    output channels, over blocks of `depth` steps (a block's weights, depth x channels, stay in L2;
    a longer block means fewer passes over C, each of which transposes the tile), for convolutions
    of `min_depth` steps at least (the transposition's shuffles share a port with the multiply-adds:
    a short depth spends too much of the tile's time on them)."""

    pixels: int
    vectors: int
    depth: int
    min_depth: int = 0

    def applies(self, m: int, wo: int, depth: int, lanes: int) -> bool:
        """Whether a convolution of `m` output channels, rows `wo` wide and `depth` steps goes by
        these channels: rows of half a tile at least, tiles of channels at most a sixth empty (with
        m = 16 half of each 32-channel tile's multiply-adds would be on zeros), depth enough.
        `_Builder._by_channels` decides the same in IR."""
        width = self.vectors * lanes
        full = -(-m // width) * width * 5 <= m * 6
        return 2 * wo >= self.pixels and full and depth >= self.min_depth


@dataclass(frozen=True)
class Tiling:
    """Register tiles and cache blocks of the GEMM (in elements)."""

    lanes: int  # floats per vector register
    wide: Tile  # the tile of most products
    narrow: Tile  # the tile of products with at most `lanes` columns (a classifier's last layer)
    few: tuple[Tile, ...]  # tiles of products with fewer rows than `wide` (small batches), by rows
    depth: int  # steps of the inner dimension per block (a tile's rows of A stay in L1 meanwhile)
    column_block: int  # columns of B packed at once
    unpacked_rows: int = 64  # at most this many rows of A: B is read in place, not packed
    prepacked_depth: int | None = None  # steps per block of a B packed ahead of time (None: `depth`)
    conv: Tile | None = None  # the tile of drug's convolution (None: `wide`)
    channels: tuple[ChannelTile, ...] = ()  # the convolution by channel vectors: the first that applies

    @property
    def conv_tile(self) -> Tile:
        return self.conv or self.wide

    @property
    def panel(self) -> int:
        """Columns of a panel of a B packed ahead of time (`packed_entry`): the wide tile's, so
        that its micro-kernel reads each step's vectors from one cache line or two, step after
        step; a wider tile reads several panels, a narrower one part of one."""
        return self.wide.vectors * self.lanes


def host_tiling(features: str) -> Tiling:
    """The tiling for the host's registers: AVX-512 has 32 of 16 floats (an 8 x 32 tile: 16
    accumulators, 2 for B, 1 broadcast), AVX 16 of 8 (6 x 16: 12 accumulators), SSE 16 of 4; the
    narrow and few-row tiles keep as many accumulators. A packed block of B (depth x column_block
    floats) is read once per row tile: it has to stay in L2, 1 MiB on AVX-512 cores, 256 KiB on
    older ones. The convolution's vectors of B are one or two masked loads each (a vector's pixels
    span two output rows), so on AVX-512 its tile is a vector wider (8 x 48: 24 accumulators, 3
    for B, 1 broadcast), which takes fewer loads per multiply-add; and where a convolution has 32
    output channels or so, it goes by channels instead (`ChannelTile`: 14 pixels x 32 channels,
    28 accumulators, a 4-byte broadcast per pixel and two aligned loads of weights per step), or
    with 16 and a depth of 64 steps or more, by 28 pixels x 16 channels. A B packed ahead of time
    goes by blocks of 512 steps there: it is not copied per block, and each block of C is read and
    written back half as often (measured: 2-3% on an inference MLP's GEMMs at batch 64)."""
    flags = set(features.split(","))
    if "+avx512f" in flags:
        few = (Tile(1, 8), Tile(2, 8), Tile(4, 4))
        channels = (ChannelTile(14, 2, depth=512), ChannelTile(28, 1, depth=512, min_depth=64))
        return Tiling(16, Tile(8, 2), Tile(16, 1), few, depth=256, column_block=512, conv=Tile(8, 3), channels=channels,
                      prepacked_depth=512)  # fmt: skip
    few = (Tile(1, 8), Tile(2, 4), Tile(4, 2))
    if "+avx" in flags:
        return Tiling(8, Tile(6, 2), Tile(12, 1), few, depth=256, column_block=256)
    return Tiling(4, Tile(4, 2), Tile(8, 1), few, depth=256, column_block=256)


def _ceil_div(b: ir.IRBuilder, x, y, name: str):
    return b.udiv(b.add(x, b.sub(y, i64(1))), y, name=name)


def _min(b: ir.IRBuilder, x, y, name: str):
    return b.select(b.icmp_signed("<", x, y), x, y, name=name)


def _blocks(b: ir.IRBuilder, total, block: int | ir.Value, name: str, balanced_multiple: int = 0):
    """(count, size) of the blocks of at most `block` that cover [0, total). `balanced_multiple`
    > 0: blocks of equal size (rounded up to that multiple) instead of full blocks and a small
    last one, so that no pass over the data is a short one."""
    size = block if isinstance(block, ir.Value) else i64(block)
    count = _ceil_div(b, total, size, f"{name}.count")
    if balanced_multiple:
        size = _ceil_div(b, total, count, f"{name}.even")
        size = b.mul(_ceil_div(b, size, i64(balanced_multiple), f"{name}.units"), i64(balanced_multiple))
    return count, size


class _Loop:
    """`with _Loop(b, total, block, name) as (start, size):` blocks of [0, total)."""

    def __init__(self, b: ir.IRBuilder, total, block: int, name: str):
        self.b, self.total, self.name = b, total, name
        self.count, self.block = _blocks(b, total, block, name)

    def __enter__(self):
        self._loop = for_range(self.b, self.count, self.name)
        index = self._loop.__enter__()
        start = self.b.mul(index, self.block, name=f"{self.name}.start")
        size = _min(self.b, self.block, self.b.sub(self.total, start), f"{self.name}.size")
        return start, size

    def __exit__(self, *exc):
        return self._loop.__exit__(*exc)


def _built_once(method):
    """A builder method that emits a function: called again with the same arguments (a tile that
    two roles share), it returns the function it emitted the first time."""

    @functools.wraps(method)
    def build(self, *args):
        key = (method.__name__, *args)
        if key not in self._built:
            self._built[key] = method(self, *args)
        return self._built[key]

    return build


class _Builder:
    def __init__(self, module: ir.Module, tiling: Tiling, int_bits: int):
        self.module, self.t, self.int_type = module, tiling, ir.IntType(int_bits)
        self._built: dict[tuple, ir.Function] = {}
        self.vector = ir.VectorType(F32, tiling.lanes)
        self.mask = ir.VectorType(ir.IntType(1), tiling.lanes)

    def intrinsic(self, name: str, ret, args) -> ir.Function:
        return declared(self.module, name, ret, args)

    def function(self, name: str, args: list[tuple[str, ir.Type]], ret=VOID, internal=True):
        fn = ir.Function(self.module, ir.FunctionType(ret, [t for _, t in args]), name)
        for arg, (arg_name, _) in zip(fn.args, args):
            arg.name = arg_name
        if internal:
            fn.linkage = "internal"
            # kept out of their callers where LLVM's optimizer runs (a library's object): inlined,
            # each micro-kernel copy multiplies its work (loop unswitching clones whole loop
            # nests around it) for no speed
            fn.attributes.add("noinline")
        return fn, ir.IRBuilder(fn.append_basic_block("entry"))

    def splat(self, b: ir.IRBuilder, scalar) -> ir.Value:
        """A vector of `lanes` copies of `scalar` (of its type: floats, or i64 for masks)."""
        lanes = self.t.lanes
        vector = ir.VectorType(scalar.type, lanes)
        one = b.insert_element(ir.Constant(vector, ir.Undefined), scalar, ir.Constant(I32, 0))
        zeros = ir.Constant(ir.VectorType(I32, lanes), [0] * lanes)
        return b.shuffle_vector(one, ir.Constant(vector, ir.Undefined), zeros, name="splat")

    def element(self, b: ir.IRBuilder, base, offset, name: str):
        return b.gep(base, [offset], source_etype=F32, inbounds=True, name=name)

    # -- micro-kernel ---------------------------------------------------------------------------
    @_built_once
    def micro_kernel(self, tile: Tile) -> ir.Function:
        """`micro(depth, a, a_row, a_step, b, b_step, b_group, c, ldc, rows, cols, alpha, beta)`: the
        tile of C at `c` (its first `rows` x `cols` elements) = alpha op(A) op(B) + beta C, with
        op(A)[r, p] at a[r*a_row + p*a_step] and op(B)[p, j] at b[(j/P)*b_group + p*b_step + j%P]
        for P = `Tiling.panel` columns (b_group = P: a panel packed per call, or B itself; larger:
        panels packed ahead of time, one after the other); columns past `cols` are never read.
        Where beta is 0, C is not read into the sum (a NaN there must not survive)."""
        lanes = self.t.lanes
        fn, b = self.function(
            f"drug_sgemm.micro{tile.rows}x{tile.vectors * lanes}",
            [("depth", I64), ("a", PTR), ("a.row", I64), ("a.step", I64), ("b", PTR), ("b.step", I64),
             ("b.group", I64), ("c", PTR), ("ldc", I64), ("rows", I64), ("cols", I64), ("alpha", F32),
             ("beta", F32)],
        )  # fmt: skip
        depth, a, a_row, a_step, bp, b_step, b_group, c, ldc, rows, cols, alpha, beta = fn.args
        masks = self.column_masks(b, cols, tile.vectors)
        per_group = self.t.panel // lanes
        groups = range(-(-tile.vectors // per_group))
        bases = [self.element(b, bp, b.mul(i64(g), b_group), f"b.group{g}") if g else bp for g in groups]

        for whole in self._by_width(fn, b, cols, tile.vectors * lanes):

            def load_b(b: ir.IRBuilder, p: ir.Value, whole: bool = whole) -> list[ir.Value]:
                row = b.mul(p, b_step, name="b.row")
                return [
                    vector
                    for g, base in zip(groups, bases)
                    for vector in self._row_vectors(b, base, row, masks[g * per_group : (g + 1) * per_group], whole)
                ]

            self._accumulate(fn, b, tile, depth, a, a_row, a_step, load_b, c, ldc, rows, cols, alpha, beta, masks)
        return fn

    @_built_once
    def conv_micro_kernel(self, tile: Tile, segments: int) -> ir.Function:
        """`conv_micro(depth, a, lda, offsets, image, q0, wo, row_stride, c, ldc, rows, cols, beta, bias, floor)`:
        `micro_kernel` (alpha 1, A not transposed) with op(B)[p, j] = image[offsets[p] + at(q0 + j)],
        at(q) = (q // wo) * row_stride + q % wo: the column matrix of a convolution with stride 1
        along rows, read from the (padded) image where im2col would have copied it from. Output
        pixel q is (q // wo, q % wo); the offsets hold each patch entry's (channel, kernel row,
        kernel column) place in the image. A vector's pixels lie in at most `segments` output rows
        (`conv_entry` picks the kernel by `wo`): a masked load per row fills it. Each stored vector is
        finished, C = max(C + bias[row], floor) (`_epilogue`; zeros and -inf where there is nothing
        to finish)."""
        lanes = self.t.lanes
        fn, b = self.function(
            f"drug_sconv.micro{tile.rows}x{tile.vectors * lanes}.rows{segments}",
            [("depth", I64), ("a", PTR), ("lda", I64), ("offsets", PTR), ("image", PTR), ("q0", I64), ("wo", I64),
             ("row_stride", I64), ("c", PTR), ("ldc", I64), ("rows", I64), ("cols", I64), ("beta", F32),
             ("bias", PTR), ("floor", F32)],
        )  # fmt: skip
        depth, a, lda, offsets, image, q0, wo, row_stride, c, ldc, rows, cols, beta, bias, floor = fn.args
        masked_load = self.masked("load")
        masks = self.column_masks(b, cols, tile.vectors)
        lane = ir.Constant(ir.VectorType(I64, lanes), list(range(lanes)))
        zero = ir.Constant(self.vector, [0.0] * lanes)
        rows_of = []  # per vector, per output row its pixels lie in: where they start, which lanes
        for j in range(tile.vectors):
            q = b.add(q0, i64(j * lanes), name=f"q{j}")
            y = b.udiv(q, wo, name=f"y{j}")
            x = b.sub(q, b.mul(y, wo), name=f"x{j}")
            start = b.add(b.mul(y, row_stride), x, name=f"start{j}")
            parts = []
            for d in range(segments):  # lane l is pixel x + l of the vector's first row, or of the d-th after it
                lo = self.splat(b, b.sub(b.mul(wo, i64(d)), x, name=f"lo{j}.{d}"))
                hi = self.splat(b, b.sub(b.mul(wo, i64(d + 1)), x, name=f"hi{j}.{d}"))
                inside = b.and_(b.icmp_signed(">=", lane, lo), b.icmp_signed("<", lane, hi))
                at = b.add(start, b.mul(i64(d), b.sub(row_stride, wo)), name=f"start{j}.{d}")
                parts.append((at, b.and_(masks[j], inside, name=f"mask{j}.{d}")))
            rows_of.append(parts)

        def load_b(b: ir.IRBuilder, p: ir.Value) -> list[ir.Value]:
            offset = b.load(b.gep(offsets, [p], source_etype=I64, inbounds=True), typ=I64, name="offset")
            vectors = []
            for j, parts in enumerate(rows_of):
                value = zero
                for part, (start, mask) in enumerate(parts):
                    at = self.element(b, image, b.add(offset, start), f"b{j}.{part}.at")
                    value = b.call(masked_load, [at, ir.Constant(I32, 4), mask, value], name=f"b{j}.{part}")
                vectors.append(value)
            return vectors

        one = ir.Constant(F32, 1.0)
        self._accumulate(fn, b, tile, depth, a, lda, i64(1), load_b, c, ldc, rows, cols, one, beta, masks,
                         epilogue=(bias, floor))  # fmt: skip
        return fn

    @_built_once
    def conv_channels_micro_kernel(self, pixels: int, vectors: int) -> ir.Function:
        """`conv_channels(depth, w, offsets, image, c, ldc, rows, first, end, beta, bias, floor)`: the
        convolution's tile of `vectors` x lanes output channels by `pixels` adjacent pixels of one
        output row, with the channels in the vectors: each step broadcasts a pixel, image[offsets[p]
        + r] for pixel r of the tile (4-byte loads, never split across cache lines) against the
        channels' weights, w[p*width + o] (a `pack`ed panel: aligned loads). The sums are transposed
        in registers at the end, so that C (output channel o's row at c + o*ldc) takes the lanes
        [first, end) of each channel's row: C = acc + beta C, finished by `_epilogue` for the
        first `rows` channels."""
        lanes, width = self.t.lanes, vectors * self.t.lanes
        fn, b = self.function(
            f"drug_sconv.channels{pixels}x{width}",
            [("depth", I64), ("w", PTR), ("offsets", PTR), ("image", PTR), ("c", PTR), ("ldc", I64), ("rows", I64),
             ("first", I64), ("end", I64), ("beta", F32), ("bias", PTR), ("floor", F32)],
        )  # fmt: skip
        depth, w, offsets, image, c, ldc, rows, first, end, beta, bias, floor = fn.args
        # the tile's output, a few pixels in each of `width` rows, is stored after the whole depth: its
        # lines asked for now (for writing) are in cache by then, instead of every row's store waiting
        prefetch = self.intrinsic("llvm.prefetch.p0", VOID, [PTR, I32, I32, I32])
        for o in range(width):
            for x in (0, pixels - 1):
                at = self.element(b, c, b.add(b.mul(i64(o), ldc), i64(x)), f"pf{o}.{x}")
                b.call(prefetch, [at, ir.Constant(I32, 1), ir.Constant(I32, 3), ir.Constant(I32, 1)])
        fma = self.intrinsic(f"llvm.fmuladd.v{lanes}f32", self.vector, [self.vector] * 3)

        def step(b: ir.IRBuilder, p, acc) -> list[list[ir.Value]]:
            offset = b.load(b.gep(offsets, [p], source_etype=I64, inbounds=True), typ=I64, name="offset")
            row = self.element(b, w, b.mul(p, i64(width)), "w.row")
            weights = []
            for v in range(vectors):
                weight = b.load(self.element(b, row, i64(v * lanes), f"w{v}.at"), typ=self.vector, name=f"w{v}")
                weight.align = lanes * 4
                weights.append(weight)
            new = []
            for r in range(pixels):
                pixel = b.load(self.element(b, image, b.add(offset, i64(r)), f"x{r}.at"), typ=F32, name=f"x{r}")
                splat = self.splat(b, pixel)
                new.append([b.call(fma, [splat, weights[v], acc[r][v]], name=f"c{r}.{v}.next") for v in range(vectors)])
            return new

        new = self._sum_loop(fn, b, pixels, vectors, depth, step)
        zero = ir.Constant(self.vector, [0.0] * lanes)
        # per vector of channels and group of `lanes` pixels: the pixels' vectors (zeros past the
        # tile) transposed to the channels'
        groups = -(-pixels // lanes)
        channel_rows: list[list[ir.Value]] = [[] for _ in range(width)]
        for v in range(vectors):
            for s in range(0, groups * lanes, lanes):
                block = transpose(b, [new[s + r][v] if s + r < pixels else zero for r in range(lanes)])
                for o, row in enumerate(block):
                    channel_rows[v * lanes + o].append(row)
        masks = []
        for s in range(0, groups * lanes, lanes):
            lane = ir.Constant(ir.VectorType(I64, lanes), list(range(s, s + lanes)))
            masks.append(b.and_(b.icmp_signed(">=", lane, self.splat(b, first)),
                                b.icmp_signed("<", lane, self.splat(b, end)), name=f"inside{s}"))  # fmt: skip
        beta_zero = b.fcmp_ordered("==", beta, ir.Constant(F32, 0.0), name="beta.zero")
        finish = self._epilogue(b, Tile(width, groups), bias, floor, rows)
        one, beta_v = self.splat(b, ir.Constant(F32, 1.0)), self.splat(b, beta)
        self._store_tile(b, channel_rows, c, ldc, one, beta_v, beta_zero, masks, rows, finish)
        b.ret_void()
        return fn

    def _epilogue(self, b: ir.IRBuilder, tile: Tile, bias, floor, rows):
        """finish(r, value) = max(value + bias[r], floor) for row r of the tile (NaN stays NaN:
        floor 0 is a relu, -inf none); rows past the edge read the last row's bias. One store path
        for every call: finishing costs an add and a max per vector stored, against a few hundred
        multiply-adds per vector before it."""
        last = b.sub(rows, i64(1), name="bias.last")
        biases = [
            self.splat(b, b.load(self.element(b, bias, _min(b, i64(r), last, f"bias.r{r}"), f"bias{r}.at"), typ=F32))
            for r in range(tile.rows)
        ]
        floor_v = self.splat(b, floor)

        def finish(r: int, value: ir.Value) -> ir.Value:
            biased = b.fadd(value, biases[r], name=f"biased{r}")
            # floor > x ? floor : x, one vector max on x86 (whose max returns its second operand when
            # either is NaN): a NaN sum stays NaN, like np.maximum
            return b.select(b.fcmp_ordered(">", floor_v, biased), floor_v, biased, name=f"finished{r}")

        return finish

    def _zeros(self, count: int) -> ir.Value:
        """A constant array of `count` float zeros: the bias of tiles with nothing to finish."""
        name = f"drug_sconv.zeros{count}"
        if name not in self.module.globals:
            array = ir.ArrayType(F32, count)
            table = ir.GlobalVariable(self.module, array, name)
            table.initializer, table.global_constant, table.linkage = ir.Constant(array, None), True, "internal"
        return self.module.globals[name]

    def _accumulate(self, fn, b, tile: Tile, depth, a, a_row, a_step, load_b, c, ldc, rows, cols, alpha, beta,
                    masks, epilogue=None) -> None:  # fmt: skip
        """The micro-kernels' loop and store: down the depth, `load_b(b, p)` gives step p's vectors of
        B, each row's A entry is broadcast against them into the tile's accumulators; then C =
        alpha acc + beta C over the tile's first `rows` x `cols` (C not read where beta is 0), finished
        by `_epilogue` when `epilogue` = (bias, floor) is given."""
        # rows past the edge read the last row again (their sums are never stored): A needs no padding
        last = b.sub(rows, i64(1), name="last")
        a_rows = [
            self.element(b, a, b.mul(_min(b, i64(r), last, f"r{r}"), a_row), f"a{r}.row") for r in range(tile.rows)
        ]
        new = self._sum_loop(
            fn, b, tile.rows, tile.vectors, depth,
            lambda b, p, acc: self._step(b, a_rows, b.mul(p, a_step, name="a.col"), load_b(b, p), acc),
        )  # fmt: skip
        finish = None if epilogue is None else self._epilogue(b, tile, *epilogue, rows)
        self._store(b, tile, new, c, ldc, rows, cols, alpha, beta, masks, finish)
        b.ret_void()

    def _sum_loop(self, fn, b: ir.IRBuilder, rows: int, vectors: int, depth, step) -> list[list[ir.Value]]:
        """The loop down the depth that every micro-kernel runs: `rows` x `vectors` accumulators from
        zero, updated by `step(b, p, acc)` at each step p; returns the sums after the last step, the
        builder left in the block after the loop ("store")."""
        entry = b.block
        loop, done = fn.append_basic_block("step"), fn.append_basic_block("store")
        b.branch(loop)
        b.position_at_end(loop)
        p = b.phi(I64, name="p")
        p.add_incoming(i64(0), entry)
        zero = ir.Constant(self.vector, [0.0] * self.t.lanes)
        acc = [[b.phi(self.vector, name=f"c{r}.{j}") for j in range(vectors)] for r in range(rows)]
        new = step(b, p, acc)
        p_next = b.add(p, i64(1), name="p.next")
        p.add_incoming(p_next, loop)
        for r in range(rows):
            for j in range(vectors):
                acc[r][j].add_incoming(zero, entry)
                acc[r][j].add_incoming(new[r][j], loop)
        b.cbranch(b.icmp_signed("<", p_next, depth), loop, done)
        b.position_at_end(done)
        return new

    @staticmethod
    def _by_width(fn, b: ir.IRBuilder, cols, width: int):
        """Yields True, with `b` at the start of the code for a tile all `width` columns wide,
        then False, at the start of the code for a narrower one (its last vector masked): a
        micro-kernel's loop runs measurably slower on masked loads of B than on plain ones (Intel
        AVX-512), and every tile but a matrix's last column of tiles is whole."""
        whole, edge = fn.append_basic_block("whole"), fn.append_basic_block("edge")
        b.cbranch(b.icmp_signed("==", cols, i64(width), name="whole"), whole, edge)
        for block, is_whole in ((whole, True), (edge, False)):
            b.position_at_end(block)
            yield is_whole

    def _row_vectors(self, b: ir.IRBuilder, base, offset, masks, whole: bool = False) -> list[ir.Value]:
        """The vectors of a row of B from base[offset] on, one per mask (lanes off it read nothing, 0);
        `whole`: every lane is there to read, and plain loads read it (`_by_width` says why)."""
        lanes, zero = self.t.lanes, ir.Constant(self.vector, [0.0] * self.t.lanes)
        vectors = []
        for j, mask in enumerate(masks):
            at = self.element(b, base, b.add(offset, i64(j * lanes)), f"b{j}.at")
            if whole:
                vector = b.load(at, typ=self.vector, name=f"b{j}")
                vector.align = 4
            else:
                vector = b.call(self.masked("load"), [at, ir.Constant(I32, 4), mask, zero], name=f"b{j}")
            vectors.append(vector)
        return vectors

    def _step(self, b: ir.IRBuilder, a_rows, a_col, bv, acc) -> list[list[ir.Value]]:
        """One step down the depth: each row's A entry at a_rows[r][a_col], broadcast, times B's
        vectors `bv`, added to the row's accumulators `acc[r]`."""
        lanes = self.t.lanes
        fma = self.intrinsic(f"llvm.fmuladd.v{lanes}f32", self.vector, [self.vector] * 3)
        new = []
        for r, row in enumerate(a_rows):
            splat = self.splat(b, b.load(self.element(b, row, a_col, f"a{r}.at"), name=f"a{r}", typ=F32))
            new.append([b.call(fma, [splat, v, acc[r][j]], name=f"c{r}.{j}.next") for j, v in enumerate(bv)])
        return new

    def _store(self, b, tile: Tile, new, c, ldc, rows, cols, alpha, beta, masks, finish=None) -> None:
        """C = alpha acc + beta C over the tile's first `rows` x `cols` (then `finish(row, value)`)."""
        lanes = self.t.lanes
        alpha_v, beta_v = self.splat(b, alpha), self.splat(b, beta)
        beta_zero = b.fcmp_ordered("==", beta, ir.Constant(F32, 0.0), name="beta.zero")
        full_rows = b.icmp_signed("==", rows, i64(tile.rows))
        full = b.and_(full_rows, b.icmp_signed("==", cols, i64(tile.vectors * lanes)), name="full")
        with b.if_else(full, likely=True) as (whole, edge):
            with whole:  # with beta 0, C is written without a read (a GEMM of small depth streams C)
                with b.if_else(beta_zero) as (overwrite, update):
                    with overwrite:
                        self._store_tile(b, new, c, ldc, alpha_v, beta_v, None, None, None, finish)
                    with update:
                        self._store_tile(b, new, c, ldc, alpha_v, beta_v, beta_zero, None, None, finish)
            with edge:
                self._store_tile(b, new, c, ldc, alpha_v, beta_v, beta_zero, masks, rows, finish)

    @_built_once
    def filter_micro_kernel(self, tile: Tile) -> ir.Function:
        """`filter_micro(rows, wo, row_stride, a, offsets, b, ldb, c, ldc, height, width)`: the tile
        of C at `c` (its first `height` x `width`) += op(A) op(B) over the pixels of `rows` output
        rows `wo` wide: op(A)[r, q] = a[offsets[r] + y*row_stride + x] for q = y*wo + x (row r of a
        convolution's column matrix, read from the image), op(B)[q, j] = b[q*ldb + j] (the output
        gradient, pixel-major). A loop over the rows around one over their pixels: the tile stays
        in registers across row ends."""
        lanes = self.t.lanes
        fn, b = self.function(
            f"drug_sconv_filter.micro{tile.rows}x{tile.vectors * lanes}",
            [("rows", I64), ("wo", I64), ("row_stride", I64), ("a", PTR), ("offsets", PTR), ("b", PTR), ("ldb", I64),
             ("c", PTR), ("ldc", I64), ("height", I64), ("width", I64)],
        )  # fmt: skip
        rows, wo, row_stride, a, offsets, bp, ldb, c, ldc, height, width = fn.args
        masks = self.column_masks(b, width, tile.vectors)
        zero = ir.Constant(self.vector, [0.0] * lanes)
        last = b.sub(height, i64(1), name="last")
        a_rows = []
        for r in range(tile.rows):  # rows past the edge read the last row again (never stored)
            at = b.gep(offsets, [_min(b, i64(r), last, f"r{r}")], source_etype=I64, inbounds=True)
            a_rows.append(self.element(b, a, b.load(at, typ=I64, name=f"offset{r}"), f"a{r}.row"))
        for whole in self._by_width(fn, b, width, tile.vectors * lanes):
            entry = b.block
            row_loop, pixel_loop = fn.append_basic_block("row"), fn.append_basic_block("pixel")
            row_end, done = fn.append_basic_block("row.end"), fn.append_basic_block("store")
            b.branch(row_loop)
            b.position_at_end(row_loop)
            y = b.phi(I64, name="y")
            y.add_incoming(i64(0), entry)
            outer = [[b.phi(self.vector, name=f"c{r}.{j}.row") for j in range(tile.vectors)] for r in range(tile.rows)]
            a_start = b.mul(y, row_stride, name="a.start")
            b_start = b.mul(b.mul(y, wo), ldb, name="b.start")
            b.branch(pixel_loop)
            b.position_at_end(pixel_loop)
            x = b.phi(I64, name="x")
            x.add_incoming(i64(0), row_loop)
            acc = [[b.phi(self.vector, name=f"c{r}.{j}") for j in range(tile.vectors)] for r in range(tile.rows)]
            bv = self._row_vectors(b, bp, b.add(b_start, b.mul(x, ldb), name="b.row"), masks, whole)
            new = self._step(b, a_rows, b.add(a_start, x, name="a.col"), bv, acc)
            x_next = b.add(x, i64(1), name="x.next")
            x.add_incoming(x_next, pixel_loop)
            for r in range(tile.rows):
                for j in range(tile.vectors):
                    acc[r][j].add_incoming(outer[r][j], row_loop)
                    acc[r][j].add_incoming(new[r][j], pixel_loop)
                    outer[r][j].add_incoming(zero, entry)
                    outer[r][j].add_incoming(new[r][j], row_end)
            b.cbranch(b.icmp_signed("<", x_next, wo), pixel_loop, row_end)
            b.position_at_end(row_end)
            y_next = b.add(y, i64(1), name="y.next")
            y.add_incoming(y_next, row_end)
            b.cbranch(b.icmp_signed("<", y_next, rows), row_loop, done)
            b.position_at_end(done)
            one = ir.Constant(F32, 1.0)
            self._store(b, tile, new, c, ldc, height, width, one, one, masks)
            b.ret_void()
        return fn

    def filter_entry(self) -> ir.Function:
        """`FILTER_SYMBOL(k, o, rows, wo, row_stride, image, offsets, g, ldg, c, ldc, scratch)`: one
        image's part of a convolution's filter gradient (transposed), c[p*ldc + j] += sum over the
        pixels q of `rows` output rows `wo` wide of image[offsets[p] + at(q)] * g[j*ldg + q], for p
        < k, j < o (`filter_micro_kernel`; the narrow tile for at most a vector of output
        channels). Per block of about `depth` pixels, g's block is transposed into `scratch`
        (`filter_scratch` floats; pixel-major, so that a step's channels are a vector) in
        registers, and stays in L1 while every row tile reads it."""
        fn, b = self.function(FILTER_SYMBOL, FILTER_ARGS, internal=False)
        k, o, rows, wo, row_stride, image, offsets, g, ldg, c, ldc, scratch = fn.args
        lanes = self.t.lanes
        narrow = b.icmp_signed("<=", o, i64(lanes), name="narrow")
        per_block = b.udiv(i64(self.t.depth), wo)
        per_block = b.select(b.icmp_signed("<", per_block, i64(1)), i64(1), per_block, name="rows.per_block")
        ld = b.mul(_ceil_div(b, o, i64(lanes), "o.vectors"), i64(lanes), name="ld.scratch")
        for tile, chosen in ((self.t.narrow, narrow), (self.t.wide, b.not_(narrow))):
            micro = self.filter_micro_kernel(tile)
            with b.if_then(chosen):
                with for_range(b, _ceil_div(b, rows, per_block, "row_blocks"), "yb") as block:
                    y0 = b.mul(block, per_block, name="y0")
                    count = _min(b, per_block, b.sub(rows, y0), "block.rows")
                    a = self.element(b, image, b.mul(y0, row_stride), "a.block")
                    g_block = self.element(b, g, b.mul(y0, wo), "g.block")
                    b.call(self.transposed(), [g_block, ldg, b.mul(count, wo, name="block.pixels"), o, scratch, ld])
                    with _Loop(b, k, tile.rows, "ir") as (p0, height):
                        with _Loop(b, o, tile.vectors * lanes, "jr") as (j0, width):
                            at = b.gep(offsets, [p0], source_etype=I64, inbounds=True, name="offsets.tile")
                            b_tile = self.element(b, scratch, j0, "g.tile")
                            c_tile = self.element(b, c, b.add(b.mul(p0, ldc), j0), "c.tile")
                            b.call(micro, [count, wo, row_stride, a, at, b_tile, ld, c_tile, ldc, height, width])
        b.ret_void()
        return fn

    @_built_once
    def transposed(self) -> ir.Function:
        """`transposed(src, ld, columns, rows, dst, ldd)`: dst[q*ldd + j] = src[j*ld + q] for q <
        `columns`, j < `rows`, by blocks of lanes x lanes transposed in registers (masked loads at
        the edges; whole vectors stored: `dst` has ceil(columns / lanes) * lanes rows of `ldd`, a
        multiple of the lanes, and what lies past the edges is left undefined)."""
        lanes = self.t.lanes
        fn, b = self.function(
            "drug_sconv_filter.transposed",
            [("src", PTR), ("ld", I64), ("columns", I64), ("rows", I64), ("dst", PTR), ("ldd", I64)],
        )  # fmt: skip
        src, ld, columns, rows, dst, ldd = fn.args
        masked_load = self.masked("load")
        zero = ir.Constant(self.vector, [0.0] * lanes)
        with for_range(b, _ceil_div(b, columns, i64(lanes), "column_blocks"), "qb") as qb:
            q0 = b.mul(qb, i64(lanes), name="q0")
            (inside,) = self.column_masks(b, b.sub(columns, q0), 1)
            with for_range(b, _ceil_div(b, rows, i64(lanes), "row_blocks"), "jb") as jb:
                j0 = b.mul(jb, i64(lanes), name="j0")
                vectors = []
                for r in range(lanes):  # rows past the edge load nothing (all lanes masked off)
                    row = b.add(j0, i64(r), name=f"j{r}")
                    mask = b.and_(inside, self.splat(b, b.icmp_signed("<", row, rows)), name=f"mask{r}")
                    at = self.element(b, src, b.add(b.mul(row, ld), q0), f"src{r}")
                    vectors.append(b.call(masked_load, [at, ir.Constant(I32, 4), mask, zero], name=f"row{r}"))
                for q, vector in enumerate(transpose(b, vectors)):
                    at = self.element(b, dst, b.add(b.mul(b.add(q0, i64(q)), ldd), j0), f"dst{q}")
                    b.store(vector, at).align = 4
        b.ret_void()
        return fn

    def masked(self, what: str) -> ir.Function:
        """llvm.masked.load / llvm.masked.store of one vector."""
        lanes = self.t.lanes
        if what == "load":
            return self.intrinsic(f"llvm.masked.load.v{lanes}f32.p0", self.vector, [PTR, I32, self.mask, self.vector])
        return self.intrinsic(f"llvm.masked.store.v{lanes}f32.p0", VOID, [self.vector, PTR, I32, self.mask])

    def _store_tile(self, b, acc, c, ldc, alpha_v, beta_v, beta_zero, masks, rows, finish=None) -> None:
        """C = alpha acc + beta C over the tile: whole vectors, or (edge tiles) the first `rows`
        rows through the column masks. `beta_zero` None: beta is known to be 0, C is not read.
        `finish(row, value)`, when given, maps each stored vector (the convolution's epilogue)."""
        lanes = self.t.lanes
        fma = self.intrinsic(f"llvm.fmuladd.v{lanes}f32", self.vector, [self.vector] * 3)
        zero = ir.Constant(self.vector, [0.0] * lanes)
        masked_load, masked_store = self.masked("load"), self.masked("store")
        for r, row_acc in enumerate(acc):
            row_start = b.mul(i64(r), ldc, name=f"row{r}")

            def store_row(r=r, row_acc=row_acc, row_start=row_start):
                for j, value in enumerate(row_acc):
                    at = self.element(b, c, b.add(row_start, i64(j * lanes)), f"c{r}.{j}.at")
                    scaled = b.fmul(alpha_v, value, name=f"scaled{r}.{j}")
                    if beta_zero is not None:  # C is read only when beta is not 0
                        if masks is None:
                            old = b.load(at, typ=self.vector, name=f"old{r}.{j}")
                            old.align = 4
                        else:
                            old = b.call(masked_load, [at, ir.Constant(I32, 4), masks[j], zero], name=f"old{r}.{j}")
                        value = b.select(beta_zero, scaled, b.call(fma, [beta_v, old, scaled]), name=f"out{r}.{j}")
                    else:
                        value = scaled
                    if finish is not None:
                        value = finish(r, value)
                    if masks is None:
                        b.store(value, at).align = 4
                    else:
                        b.call(masked_store, [value, at, ir.Constant(I32, 4), masks[j]])

            if rows is None:
                store_row()
            else:
                with b.if_then(b.icmp_signed("<", i64(r), rows)):
                    store_row()

    # -- packing --------------------------------------------------------------------------------
    @_built_once
    def pack(self) -> ir.Function:
        """`pack(dst, src, ld, by_rows, outer0, inner0, extent, depth, panel)`: the block of op(B)
        with `depth` steps of the inner dimension from `inner0` and `extent` columns from `outer0`,
        into panels `panel` wide (a multiple of the vector width): dst[q][p][e] = op(B)[inner0 + p,
        outer0 + q*panel + e], zeros past the block's edge (edge tiles need no micro-kernel of
        their own). `by_rows`: a step p is a row of `src` (B not transposed: vector copies); else a
        column (blocks transposed in registers). One function for every tile's panel width, and
        for the convolution's weights too (one module may hold both)."""
        if "drug_sgemm.pack" in self.module.globals:
            return self.module.globals["drug_sgemm.pack"]
        fn, b = self.function(
            "drug_sgemm.pack",
            [("dst", PTR), ("src", PTR), ("ld", I64), ("by_rows", I64), ("outer0", I64), ("inner0", I64),
             ("extent", I64), ("depth", I64), ("panel", I64)],
        )  # fmt: skip
        dst, src, ld, by_rows, outer0, inner0, extent, depth, panel = fn.args
        with b.if_else(b.icmp_unsigned("!=", by_rows, i64(0))) as (steps_are_rows, steps_are_columns):
            with steps_are_rows:
                self._pack_rows(b, dst, src, ld, outer0, inner0, extent, depth, panel)
            with steps_are_columns:
                self._pack_transposed(b, dst, src, ld, outer0, inner0, extent, depth, panel)
        b.ret_void()
        return fn

    def _pack_rows(self, b, dst, src, ld, outer0, inner0, extent, depth, panel) -> None:
        """B in rows into panels: row by row (one sequential read of each row), whole vectors
        copied, the last partial one of the block through a mask (zeros past the edge)."""
        lanes = self.t.lanes
        panels = _ceil_div(b, extent, panel, "panels")
        masked_load = self.masked("load")
        zero = ir.Constant(self.vector, [0.0] * lanes)
        panel_size = b.mul(depth, panel, name="panel.size")
        per_panel = b.udiv(panel, i64(lanes), name="per_panel")
        with for_range(b, depth, "p") as p, for_range(b, panels, "q") as q:
            row = b.add(b.mul(b.add(inner0, p), ld), outer0, name="src.row")
            with for_range(b, per_panel, "j") as j:
                column = b.mul(b.add(b.mul(q, per_panel), j), i64(lanes), name="column")
                out = b.add(b.mul(q, panel_size), b.add(b.mul(p, panel), b.mul(j, i64(lanes))))
                at = self.element(b, src, b.add(row, column), "src")
                whole = b.icmp_signed("<", b.add(column, i64(lanes - 1)), extent, name="whole")
                with b.if_else(whole, likely=True) as (inside, edge):
                    with inside:
                        value = b.load(at, typ=self.vector, name="v")
                        value.align = 4
                        b.store(value, self.element(b, dst, out, "dst")).align = lanes * 4
                    with edge:  # lanes past the block's edge load nothing and are 0 (all of them past it)
                        (mask,) = self.column_masks(b, b.sub(extent, column), 1)
                        value = b.call(masked_load, [at, ir.Constant(I32, 4), mask, zero])
                        b.store(value, self.element(b, dst, out, "dst")).align = lanes * 4

    def column_masks(self, b: ir.IRBuilder, width, vectors: int) -> list[ir.Value]:
        """Per vector j of a row, which of its lanes lie before column `width`."""
        t = self.t
        lane = ir.Constant(ir.VectorType(I64, t.lanes), list(range(t.lanes)))
        return [
            b.icmp_signed("<", lane, self.splat(b, b.sub(width, i64(j * t.lanes))), name=f"mask{j}")
            for j in range(vectors)
        ]

    def _pack_transposed(self, b, dst, src, ld, outer0, inner0, extent, depth, panel) -> None:
        """Transposed B into panels: whole panels in `lanes` x `lanes` blocks transposed in
        registers, the steps past the last whole block (and edge panels) element by element."""
        lanes = self.t.lanes
        memset = self.intrinsic("llvm.memset.p0.i64", VOID, [PTR, ir.IntType(8), I64, ir.IntType(1)])
        with for_range(b, _ceil_div(b, extent, panel, "panels"), "q") as q:
            first = b.mul(q, panel, name="first")
            width = _min(b, panel, b.sub(extent, first), "width")
            target = self.element(b, dst, b.mul(first, depth), "panel.dst")
            outer = b.add(outer0, first, name="outer")
            full = b.icmp_signed("==", width, panel, name="full")
            blocks = b.select(full, b.udiv(depth, i64(lanes)), i64(0), name="blocks")
            with for_range(b, blocks, "pb") as pb:
                p0 = b.mul(pb, i64(lanes), name="p0")
                with for_range(b, b.udiv(panel, i64(lanes)), "j") as j:
                    first_column = b.mul(j, i64(lanes), name="j0")
                    rows = []
                    for e in range(lanes):
                        row = b.add(b.mul(b.add(outer, b.add(first_column, i64(e))), ld), b.add(inner0, p0))
                        load = b.load(self.element(b, src, row, f"col{e}"), typ=self.vector, name=f"col{e}")
                        load.align = 4
                        rows.append(load)
                    for e, v in enumerate(transpose(b, rows)):
                        out = b.add(b.mul(b.add(p0, i64(e)), panel), first_column)
                        b.store(v, self.element(b, target, out, f"step{e}")).align = lanes * 4
            done = b.mul(blocks, i64(lanes), name="done")
            with b.if_then(b.not_(full)):
                size = b.mul(b.mul(depth, panel), i64(4))
                b.call(memset, [target, ir.Constant(ir.IntType(8), 0), size, ir.Constant(ir.IntType(1), 0)])
            with for_range(b, width, "e") as e:
                row = b.add(b.mul(b.add(outer, e), ld), inner0, name="src.row")
                with for_range(b, depth, "p", start=done) as p:
                    v = b.load(self.element(b, src, b.add(row, p), "src.at"), typ=F32)
                    b.store(v, self.element(b, target, b.add(b.mul(p, panel), e), "dst.at"))

    # -- driver ---------------------------------------------------------------------------------
    def entry(self) -> ir.Function:
        """`ENTRY_SYMBOL`, cblas_sgemm's signature: the shapes it leaves to the BLAS go there, the
        others to the blocked GEMM of the tile that fits their rows and columns."""
        fn, b, sizes = self._cblas_function(ENTRY_SYMBOL)
        fallback = ir.GlobalVariable(self.module, PTR, FALLBACK_SYMBOL)
        fallback.initializer = ir.Constant(PTR, None)
        order, ta, tb, m, n, k, alpha, a, lda, b_, ldb, beta, c, ldc = fn.args
        m64, n64, k64 = sizes[:3]
        b_trans = b.icmp_signed("==", tb, ir.Constant(I32, CBLAS_TRANS), name="b.trans")
        a_transposed = b.icmp_signed("==", ta, ir.Constant(I32, CBLAS_TRANS), name="a.transposed")
        blas = Callee(b.load(fallback, typ=PTR, name="blas"), fn.function_type)
        # column-major order (drug's kernels never ask for it) goes to the BLAS
        with b.if_then(b.icmp_signed("!=", order, ir.Constant(I32, CBLAS_ROW_MAJOR)), likely=False):
            b.call(blas, list(fn.args))
            b.ret_void()
        with b.if_then(b.icmp_signed("<=", k64, i64(0)), likely=False):  # an empty inner dimension: C = beta C
            self._scale(b, m64, n64, beta, c, sizes[5])
            b.ret_void()
        self._vector_like(b, fn, sizes, a_transposed, b_trans, alpha, a, b_, beta, c)
        a_trans = b.zext(a_transposed, I64, name="a.trans")
        status = self._by_tile(b, fn, m64, n64, [a_trans, b.zext(b_trans, I64), *sizes, alpha, a, b_, beta, c])
        with b.if_then(b.icmp_signed("!=", status, ir.Constant(I32, 0)), likely=False):
            b.call(blas, list(fn.args))  # no memory for the packed panels
        b.ret_void()
        return fn

    def packed_entry(self) -> ir.Function:
        """`PACKED_SYMBOL`, cblas_sgemm's signature (row-major; trans_b not read), for a B laid out
        ahead of time (`Tiling.panel` = P): op(B) in panels P columns wide, each holding all `ldb`
        steps of its columns (step p of column j at b[(j/P)*P*ldb + p*P + j%P]), so a block of
        columns from a multiple of P on (where a shared-out GEMM's blocks start) begins at
        b + j*ldb. Every shape goes to the blocked GEMM: nothing to pack, no memory to take."""
        fn, b, sizes = self._cblas_function(PACKED_SYMBOL)
        _, ta, _, _, _, _, alpha, a, _, b_, _, beta, c, _ = fn.args
        with b.if_then(b.icmp_signed("<=", sizes[2], i64(0)), likely=False):
            self._scale(b, sizes[0], sizes[1], beta, c, sizes[5])
            b.ret_void()
        a_transposed = b.icmp_signed("==", ta, ir.Constant(I32, CBLAS_TRANS), name="a.transposed")
        a_step = b.select(a_transposed, sizes[3], i64(1), name="a.step")
        # one row by at most a vector's columns (a classifier's last layer at batch 1): the first
        # panel's steps are rows `panel` apart
        narrow = b.and_(b.icmp_signed("==", sizes[0], i64(1)), b.icmp_signed("<=", sizes[1], i64(self.t.lanes)))
        with b.if_then(narrow, likely=False):
            b.call(self.narrow_row(), [sizes[1], sizes[2], a, a_step, b_, i64(self.t.panel), c, alpha, beta])
            b.ret_void()
        a_trans = b.zext(a_transposed, I64, name="a.trans")
        self._by_tile(b, fn, sizes[0], sizes[1], [a_trans, i64(PREPACKED), *sizes, alpha, a, b_, beta, c])
        b.ret_void()
        return fn

    def pack_entry(self) -> ir.Function:
        """`PACK_SYMBOL(b_trans, n, k, b, ldb, dst)`: the whole of op(B) (k x n) into `dst` as
        `PACKED_SYMBOL` reads it (`Tiling.panel` columns a panel, each holding all k steps; 64-byte
        aligned, ceil(n / panel) * panel * k floats). For a GEMM shared out by blocks of rows, each
        of which would otherwise pack all of B again (codegen's `KernelContext.gemm`)."""
        fn, b = self.function(
            PACK_SYMBOL, [("b.trans", I64), ("n", I64), ("k", I64), ("b", PTR), ("ldb", I64), ("dst", PTR)],
            internal=False,
        )  # fmt: skip
        b_trans, n, k, b_, ldb, dst = fn.args
        steps_are_rows = b.xor(b_trans, i64(1))
        b.call(self.pack(), [dst, b_, ldb, steps_are_rows, i64(0), i64(0), n, k, i64(self.t.panel)])
        b.ret_void()
        return fn

    def _cblas_function(self, name: str) -> tuple[ir.Function, ir.IRBuilder, list[ir.Value]]:
        """An exported function of cblas_sgemm's signature, its builder past the return of empty
        products, and its sizes m, n, k, lda, ldb, ldc as i64."""
        n_int = self.int_type
        args = [("order", I32), ("trans_a", I32), ("trans_b", I32), ("m", n_int), ("n", n_int), ("k", n_int),
                ("alpha", F32), ("a", PTR), ("lda", n_int), ("b", PTR), ("ldb", n_int), ("beta", F32),
                ("c", PTR), ("ldc", n_int)]  # fmt: skip
        fn, b = self.function(name, args, internal=False)
        _, _, _, m, n, k, _, _, lda, _, ldb, _, _, ldc = fn.args
        sizes = [b.sext(v, I64) if n_int.width < 64 else v for v in (m, n, k, lda, ldb, ldc)]
        empty = b.or_(b.icmp_signed("<=", sizes[0], i64(0)), b.icmp_signed("<=", sizes[1], i64(0)), name="empty")
        with b.if_then(empty, likely=False):
            b.ret_void()
        return fn, b, sizes

    def _by_tile(self, b: ir.IRBuilder, fn: ir.Function, m64, n64, operands: list) -> ir.Value:
        """The blocked GEMM of `operands` with the tile that fits m rows and n columns: its status."""
        # the first tile of at least m rows among the few-row ones, else narrow or wide by columns
        tiles = (*self.t.few, self.t.narrow, self.t.wide)
        narrow = b.icmp_signed("<=", n64, i64(self.t.lanes), name="narrow")
        shape = b.select(narrow, i64(len(tiles) - 2), i64(len(tiles) - 1), name="by_columns")
        for index, tile in reversed(list(enumerate(self.t.few))):
            shape = b.select(b.icmp_signed("<=", m64, i64(tile.rows)), i64(index), shape, name="tile")
        after = fn.append_basic_block("status")
        switch = b.switch(shape, after)
        statuses = []
        for index, tile in enumerate(tiles):
            block = fn.append_basic_block(f"tile{tile.rows}x{tile.vectors}")
            switch.add_case(i64(index), block)
            b.position_at_end(block)
            statuses.append((b.call(self.blocked(tile), operands, name="tile.status"), block))
            b.branch(after)
        b.position_at_end(after)
        status = b.phi(I32, name="status")
        status.add_incoming(ir.Constant(I32, 0), switch.parent)  # the default: never taken
        for value, block in statuses:
            status.add_incoming(value, block)
        return status

    def _vector_like(self, b: ir.IRBuilder, fn, sizes, a_trans, b_trans, alpha, a, b_, beta, c) -> None:
        """Products with one column, or one row times a transposed B, are dot products (nothing to
        reuse, and packing would double the traffic): `dots`, then return. Except one column
        C = op(A) b from a transposed A, which is the row C^T = b^T A: the blocked GEMM's one-row
        case, called through the entry `fn` itself."""
        m, n, k, lda, ldb, ldc = sizes
        single = b.icmp_signed("==", m, i64(1))
        one_row = b.and_(single, b_trans, name="one_row_times_transposed")
        one_column = b.icmp_signed("==", n, i64(1), name="one_column")
        dots = self.dots()
        with b.if_then(one_row, likely=False):  # c[j] = a . row j of B
            b.call(dots, [n, k, a, b.select(a_trans, lda, i64(1)), b_, ldb, i64(1), c, i64(1), alpha, beta])
            b.ret_void()
        narrow = b.and_(single, b.icmp_signed("<=", n, i64(self.t.lanes)), name="one_narrow_row")
        with b.if_then(narrow, likely=False):  # c = a B for B of one vector's columns in rows
            b.call(self.narrow_row(), [n, k, a, b.select(a_trans, lda, i64(1)), b_, ldb, c, alpha, beta])
            b.ret_void()
        with b.if_then(one_column, likely=False):  # c[i] = row i of op(A) . b
            x_step = b.select(b_trans, i64(1), ldb, name="b.step")
            as_row = b.and_(a_trans, b.and_(b.icmp_signed("==", ldc, i64(1)), b.icmp_signed("==", x_step, i64(1))))
            with b.if_then(as_row):
                order, _, _, m_arg, _, k_arg, _, _, lda_arg, *_ = fn.args
                no, one = ir.Constant(I32, CBLAS_NO_TRANS), ir.Constant(m_arg.type, 1)
                b.call(fn, [order, no, no, one, m_arg, k_arg, alpha, b_, k_arg, a, lda_arg, beta, c, m_arg])
                b.ret_void()
            y_row, y_step = b.select(a_trans, i64(1), lda), b.select(a_trans, lda, i64(1))
            b.call(dots, [m, k, b_, x_step, a, y_row, y_step, c, ldc, alpha, beta])
            b.ret_void()

    @_built_once
    def dots(self) -> ir.Function:
        """`dots(count, k, x, x_step, y, y_row, y_step, c, c_step, alpha, beta)`: c[i*c_step] = alpha
        sum over p < k of x[p*x_step] y[i*y_row + p*y_step] (+ beta c[i*c_step], not read where
        beta is 0) for i < count. Four vectors of partial sums along p where both steps are 1,
        else one element at a time (the pieces of a GEMM shared out by columns can be one strided
        column)."""
        lanes = self.t.lanes
        fn, b = self.function(
            "drug_sgemm.dots",
            [("count", I64), ("k", I64), ("x", PTR), ("x.step", I64), ("y", PTR), ("y.row", I64), ("y.step", I64),
             ("c", PTR), ("c.step", I64), ("alpha", F32), ("beta", F32)],
        )  # fmt: skip
        count, k, x, x_step, y, y_row, y_step, c, c_step, alpha, beta = fn.args
        fma = self.intrinsic(f"llvm.fmuladd.v{lanes}f32", self.vector, [self.vector] * 3)
        scalar_fma = self.intrinsic("llvm.fmuladd.f32", F32, [F32] * 3)
        reduce = self.intrinsic(f"llvm.vector.reduce.fadd.v{lanes}f32", F32, [F32, self.vector])
        contiguous = b.and_(b.icmp_signed("==", x_step, i64(1)), b.icmp_signed("==", y_step, i64(1)))
        zero = ir.Constant(self.vector, [0.0] * lanes)
        unroll, step = 4, lanes * 4
        with for_range(b, count, "i") as i:
            row = self.element(b, y, b.mul(i, y_row), "y.row.at")

            def load(b, base, offset, mask):
                return self._row_vectors(b, base, offset, [mask], whole=mask is None)[0]

            def accumulate(b, at, sums, mask=None):
                """sums[u] += x * y over the vector at p = at + u * lanes (lanes off `mask` read nothing)."""
                offsets = [b.add(at, i64(u * lanes)) for u in range(len(sums))]
                return [
                    b.call(fma, [load(b, x, o, mask), load(b, row, o, mask), total]) for o, total in zip(offsets, sums)
                ]

            with b.if_else(contiguous, likely=True) as (along_vectors, one_by_one):
                with along_vectors:
                    full = b.udiv(k, i64(step), name="full")
                    sums = self._carried(
                        fn, b, full, [zero] * unroll, lambda b, t, sums: accumulate(b, b.mul(t, i64(step)), sums)
                    )
                    done = b.mul(full, i64(step), name="done")

                    def tail_step(b, t, sums):
                        at = b.add(done, b.mul(t, i64(lanes)))
                        return accumulate(b, at, sums, self.column_masks(b, b.sub(k, at), 1)[0])

                    (first,) = self._carried(
                        fn, b, _ceil_div(b, b.sub(k, done), i64(lanes), "tail"), sums[:1], tail_step
                    )
                    vector = first
                    for other in sums[1:]:
                        vector = b.fadd(vector, other)
                    vector_total = b.call(reduce, [ir.Constant(F32, 0.0), vector], name="vector_total")
                    vector_end = b.block
                with one_by_one:

                    def element_step(b, p, totals):
                        xe = b.load(self.element(b, x, b.mul(p, x_step), "x.at"), typ=F32)
                        ye = b.load(self.element(b, row, b.mul(p, y_step), "y.at"), typ=F32)
                        return [b.call(scalar_fma, [xe, ye, totals[0]])]

                    (element_total,) = self._carried(fn, b, k, [ir.Constant(F32, 0.0)], element_step)
                    element_end = b.block
            total = b.phi(F32, name="dot")
            total.add_incoming(vector_total, vector_end)
            total.add_incoming(element_total, element_end)
            at = self.element(b, c, b.mul(i, c_step), "c.at")
            value = b.fmul(alpha, total, name="scaled")
            with b.if_else(b.fcmp_ordered("==", beta, ir.Constant(F32, 0.0))) as (overwrite, update):
                with overwrite:  # C is read only when beta is not 0
                    b.store(value, at)
                with update:
                    b.store(b.call(scalar_fma, [beta, b.load(at, typ=F32), value]), at)
        b.ret_void()
        return fn

    @_built_once
    def narrow_row(self) -> ir.Function:
        """`narrow_row(n, k, a, a_step, b, ldb, c, alpha, beta)`: the one row c = alpha a B (+ beta
        c) for B of n <= lanes columns in rows: one masked vector of B per step, with four sums
        along p so that no multiply-add waits for the one before (the blocked GEMM's one-row tile
        runs a single chain, and a classifier's last layer at batch 1 is that shape)."""
        lanes, unroll = self.t.lanes, 4
        fn, b = self.function(
            "drug_sgemm.narrow_row",
            [("n", I64), ("k", I64), ("a", PTR), ("a.step", I64), ("b", PTR), ("ldb", I64), ("c", PTR),
             ("alpha", F32), ("beta", F32)],
        )  # fmt: skip
        n, k, a, a_step, b_, ldb, c, alpha, beta = fn.args
        fma = self.intrinsic(f"llvm.fmuladd.v{lanes}f32", self.vector, [self.vector] * 3)
        masks = self.column_masks(b, n, 1)

        def add_row(b, p, total):
            weight = self.splat(b, b.load(self.element(b, a, b.mul(p, a_step), "a.at"), typ=F32))
            return b.call(fma, [weight, self._row_vectors(b, b_, b.mul(p, ldb), masks)[0], total])

        def step(b, t, sums):
            return [add_row(b, b.add(b.mul(t, i64(unroll)), i64(u)), total) for u, total in enumerate(sums)]

        zero = ir.Constant(self.vector, [0.0] * lanes)
        full = b.udiv(k, i64(unroll), name="full")
        sums = self._carried(fn, b, full, [zero] * unroll, step)
        done = b.mul(full, i64(unroll), name="done")
        (total,) = self._carried(fn, b, b.sub(k, done), sums[:1], lambda b, t, s: [add_row(b, b.add(done, t), s[0])])
        for other in sums[1:]:
            total = b.fadd(total, other)
        beta_zero = b.fcmp_ordered("==", beta, ir.Constant(F32, 0.0), name="beta.zero")
        self._store_tile(b, [[total]], c, i64(0), self.splat(b, alpha), self.splat(b, beta), beta_zero, masks, None)
        b.ret_void()
        return fn

    @staticmethod
    def _carried(fn, b: ir.IRBuilder, trips, initial: list, step) -> list:
        """`values = step(b, t, values)` for t < trips, the values carried in registers (phis);
        returns them after the loop (`initial` when trips is 0)."""
        before = b.block
        loop, done = fn.append_basic_block("carried.loop"), fn.append_basic_block("carried.done")
        b.cbranch(b.icmp_signed(">", trips, i64(0)), loop, done)
        b.position_at_end(loop)
        t = b.phi(I64, name="t")
        values = [b.phi(v.type) for v in initial]
        new = step(b, t, values)
        t_next = b.add(t, i64(1), name="t.next")
        end = b.block
        t.add_incoming(i64(0), before)
        t.add_incoming(t_next, end)
        for phi, start, value in zip(values, initial, new):
            phi.add_incoming(start, before)
            phi.add_incoming(value, end)
        b.cbranch(b.icmp_signed("<", t_next, trips), loop, done)
        b.position_at_end(done)
        results = []
        for start, value in zip(initial, new):
            result = b.phi(value.type)
            result.add_incoming(start, before)
            result.add_incoming(value, end)
            results.append(result)
        return results

    def _scale(self, b: ir.IRBuilder, m, n, beta, c, ldc) -> None:
        """C = beta C over m x n, zeros where beta is 0 whatever C held (a GEMM with an empty inner dimension)."""
        zero = ir.Constant(F32, 0.0)
        with for_range(b, m, "i") as i, for_range(b, n, "j") as j:
            at = self.element(b, c, b.add(b.mul(i, ldc), j), "c.at")
            scaled = b.select(b.fcmp_ordered("==", beta, zero), zero, b.fmul(beta, b.load(at, typ=F32)))
            b.store(scaled, at)

    def conv_entry(self) -> ir.Function:
        """`CONV_SYMBOL(m, q_lo, q_hi, depth, w, ldw, image, offsets, wo, row_stride, c, ldc, bias, floor)`:
        output pixels [q_lo, q_hi) of one image's convolution, c[o*ldc + q] = sum over p < depth of
        w[o*ldw + p] * image[offsets[p] + at(q)] for the m output channels: by tiles of channels
        (`_conv_by_channels`) where the host has them and they fit (`ChannelTile.applies`), else by
        tiles of pixels (`conv_micro_kernel`: no column matrix, no packing; blocks of `depth` steps
        keep a row tile's weights in L1). Output rows must be half a vector wide at least (`wo` >=
        lanes / 2). A `bias` (not null)
        finishes each tile while it is in registers: c = max(c + bias[o], floor), floor 0 a relu,
        -inf none (a pass over the output saved)."""
        fn, b = self.function(CONV_SYMBOL, CONV_ARGS, internal=False)
        m, q_lo, q_hi, depth, w, ldw, image, offsets, wo, row_stride, c, ldc, bias, floor = fn.args
        for channels in self.t.channels:  # where the channel tiles waste little, by channels
            with b.if_then(self._by_channels(b, m, wo, depth, channels), likely=True):
                self._conv_by_channels(b, fn.args, channels)
                b.ret_void()
        tile = self.t.conv_tile
        # a vector spans two output rows at most when they are a vector wide, else three (wo >= lanes / 2)
        two = b.icmp_signed(">=", wo, i64(self.t.lanes), name="two_rows")
        micro = b.select(two, self.conv_micro_kernel(tile, 2), self.conv_micro_kernel(tile, 3), name="micro")
        with self._depth_blocks(b, depth, self.t.depth, offsets, bias, floor, tile.rows) as block:
            pc, kc, beta, step_offsets, finish = block
            with _Loop(b, m, tile.rows, "ir") as (row, height):
                a_tile = self.element(b, w, b.add(b.mul(row, ldw), pc), "w.tile")
                row_bias, row_floor = finish(row)
                with _Loop(b, b.sub(q_hi, q_lo), tile.vectors * self.t.lanes, "jr") as (jr, width):
                    q0 = b.add(q_lo, jr, name="q0")
                    c_tile = self.element(b, c, b.add(b.mul(row, ldc), q0), "c.tile")
                    args = [kc, a_tile, ldw, step_offsets, image, q0, wo, row_stride, c_tile, ldc, height, width, beta,
                            row_bias, row_floor]  # fmt: skip
                    b.call(Callee(micro, self.conv_micro_kernel(tile, 2).function_type), args)
        b.ret_void()
        return fn

    @contextlib.contextmanager
    def _depth_blocks(self, b: ir.IRBuilder, depth, block: int, offsets, bias, floor, rows: int):
        """`with` per block of at most `block` steps of a convolution's depth (equal blocks): (pc,
        kc, beta, the tap offsets from pc, finish). beta is 0 for the first block (C written), 1
        after (C added to). `finish(row)` gives the (bias, floor) of the tile of `rows` output channels
        from `row`: the bias and the floor on the last block of a convolution with a bias, else zeros
        and -inf, which add nothing and cut nothing."""
        count, size = _blocks(b, depth, block, "kc", balanced_multiple=1)
        zeros = b.gep(self._zeros(rows), [i64(0), i64(0)], source_etype=ir.ArrayType(F32, rows))
        with for_range(b, count, "pc") as index:
            pc = b.mul(index, size, name="pc")
            kc = _min(b, size, b.sub(depth, pc), "kc")
            beta = b.select(b.icmp_signed("==", index, i64(0)), ir.Constant(F32, 0.0), ir.Constant(F32, 1.0))
            last = b.icmp_signed("==", index, b.sub(count, i64(1)), name="last_block")
            finishes = b.and_(last, b.icmp_unsigned("!=", b.ptrtoint(bias, I64), i64(0)), name="finish")
            step_offsets = b.gep(offsets, [pc], source_etype=I64, inbounds=True, name="offsets.pc")

            def finish(row) -> tuple[ir.Value, ir.Value]:
                tile_bias = b.select(finishes, self.element(b, bias, row, "bias.row"), zeros, "bias.tile")
                return tile_bias, b.select(finishes, floor, ir.Constant(F32, -math.inf), name="floor.tile")

            yield pc, kc, beta, step_offsets, finish

    def _by_channels(self, b: ir.IRBuilder, m, wo, depth, tile: ChannelTile) -> ir.Value:
        """`ChannelTile.applies` for the `m`, `wo` and `depth` of a call."""
        width = tile.vectors * self.t.lanes
        padded = b.mul(_ceil_div(b, m, i64(width), "channel_tiles"), i64(width))
        full = b.icmp_signed("<=", b.mul(padded, i64(5)), b.mul(m, i64(6)), name="channels_full")
        full = b.and_(full, b.icmp_signed(">=", depth, i64(tile.min_depth)), name="channels_deep")
        return b.and_(full, b.icmp_signed(">=", b.mul(wo, i64(2)), i64(tile.pixels)), name="by_channels")

    def _conv_by_channels(self, b: ir.IRBuilder, args, tile: ChannelTile) -> None:
        """`conv_entry` by `conv_channels_micro_kernel`: per block of the depth and tile of output
        channels, their weights packed (transposed: a step's channels side by side), then per output
        row of the pixel range its tiles, the row cut into equal ones; a row's last tile, when
        shorter, starts a tile before the row's end and stores only its new pixels."""
        m, q_lo, q_hi, depth, w, ldw, image, offsets, wo, row_stride, c, ldc, bias, floor = args
        width = tile.vectors * self.t.lanes
        smallest = -(-tile.pixels // 2)
        # the rows cut into equal tiles of ceil(wo / ceil(wo / most)) pixels, and their micro-kernel
        per_row = _ceil_div(b, wo, i64(tile.pixels), "tiles_per_row")
        pixels = _ceil_div(b, wo, per_row, "pixels")
        kernels = [self.conv_channels_micro_kernel(r, tile.vectors) for r in range(smallest, tile.pixels + 1)]
        micro = kernels[0]
        for r, kernel in zip(range(smallest + 1, tile.pixels + 1), kernels[1:]):
            micro = b.select(b.icmp_signed("==", pixels, i64(r)), kernel, micro, name=f"micro{r}")
        panel = b.alloca(F32, size=width * tile.depth, name="w.panel")
        panel.align = 64
        first_row = b.udiv(q_lo, wo, name="first_row")
        end_row = _ceil_div(b, q_hi, wo, "end_row")
        with self._depth_blocks(b, depth, tile.depth, offsets, bias, floor, width) as block:
            pc, kc, beta, step_offsets, finish = block
            with _Loop(b, m, width, "oc") as (o0, channels):
                b.call(self.pack(), [panel, w, ldw, i64(0), o0, pc, channels, kc, i64(width)])
                tile_bias, tile_floor = finish(o0)
                with for_range(b, end_row, "y", start=first_row) as y:
                    row_q = b.mul(y, wo, name="row_q")
                    x_lo = b.sub(b.select(b.icmp_signed(">", q_lo, row_q), q_lo, row_q), row_q, name="x_lo")
                    x_hi = b.sub(_min(b, q_hi, b.add(row_q, wo), "row_end"), row_q, name="x_hi")
                    with for_range(b, _ceil_div(b, b.sub(x_hi, x_lo), pixels, "row_tiles"), "px") as px:
                        x_new = b.add(x_lo, b.mul(px, pixels), name="x_new")
                        # a short tile moves back to end at x_hi (at x 0 at the least: wo >= pixels)
                        x0 = _min(b, x_new, b.sub(x_hi, pixels), "x0.back")
                        x0 = b.select(b.icmp_signed("<", x0, i64(0)), i64(0), x0, name="x0")
                        first = b.sub(x_new, x0, name="first")
                        end = _min(b, b.add(first, pixels), b.sub(x_hi, x0), "end")
                        at = self.element(b, image, b.add(b.mul(y, row_stride), x0), "pixel0")
                        out = self.element(b, c, b.add(b.mul(o0, ldc), b.add(row_q, x0)), "c.tile")
                        b.call(Callee(micro, kernels[0].function_type),
                               [kc, panel, step_offsets, at, out, ldc, channels, first, end, beta, tile_bias,
                                tile_floor])  # fmt: skip

    @_built_once
    def blocked(self, tile: Tile) -> ir.Function:
        """`blocked(a_trans, b_trans, m, n, k, lda, ldb, ldc, alpha, a, b, beta, c)` -> 1 when it
        could not allocate its panels (nothing written), else 0. b_trans `PREPACKED`: B is in
        panels packed ahead of time, `ldb` steps deep (`packed_entry`)."""
        t, columns, panel_width = self.t, tile.vectors * self.t.lanes, self.t.panel
        fn, b = self.function(
            f"drug_sgemm.blocked{tile.rows}x{columns}",
            [("a.trans", I64), ("b.trans", I64), ("m", I64), ("n", I64), ("k", I64), ("lda", I64), ("ldb", I64),
             ("ldc", I64), ("alpha", F32), ("a", PTR), ("b", PTR), ("beta", F32), ("c", PTR)],
            ret=I32,
        )  # fmt: skip
        a_trans, b_trans, m, n, k, lda, ldb, ldc, alpha, a, b_, beta, c = fn.args
        micro, pack = self.micro_kernel(tile), self.pack()
        # op(B) is packed unless B is in rows (not transposed) and A has few rows (a task's share
        # of a batch, a convolution's output channels): each panel is then read by a few row
        # tiles, which costs less than copying it, and the micro-kernel reads B where it is; or
        # unless it was packed ahead of time (a constant: prepack.py)
        prepacked = b.icmp_unsigned("==", b_trans, i64(PREPACKED), name="prepacked")
        some = b.or_(b.icmp_unsigned("!=", b_trans, i64(0)), b.icmp_signed(">", m, i64(t.unpacked_rows)))
        packed = b.and_(b.not_(prepacked), some, name="packed")
        # a B packed ahead of time is not copied per block: longer blocks reload C less often
        longest = b.select(prepacked, i64(t.prepacked_depth or t.depth), i64(t.depth), name="kc.max")
        depth_count, depth_block = _blocks(b, k, longest, "kc", balanced_multiple=1)
        panels = b.mul(_ceil_div(b, n, i64(columns), "n.panels"), i64(columns))
        block_bytes = b.mul(b.mul(depth_block, _min(b, panels, i64(t.column_block), "nc.max")), i64(4))
        malloc, free = self.intrinsic("malloc", PTR, [I64]), self.intrinsic("free", VOID, [PTR])
        before = b.block
        with b.if_then(packed):  # B read in place needs no memory (free(NULL) does nothing)
            allocated = b.call(malloc, [b.add(block_bytes, i64(ALIGN))], name="allocated")
            with b.if_then(b.icmp_unsigned("==", b.ptrtoint(allocated, I64), i64(0)), likely=False):
                b.ret(ir.Constant(I32, 1))
            allocating = b.block
        raw = b.phi(PTR, name="scratch")
        raw.add_incoming(ir.Constant(PTR, None), before)
        raw.add_incoming(allocated, allocating)
        b_pack = aligned(b, raw, ALIGN, "b.pack")
        # op(A)[i, p] is a[i*lda + p], or a[p*lda + i] when transposed: the micro-kernel reads it in
        # place (a tile's rows are `rows` streams, or one), so A is never copied
        transposed = b.icmp_unsigned("!=", a_trans, i64(0))
        a_row = b.select(transposed, i64(1), lda, name="a.row")
        a_step = b.select(transposed, lda, i64(1), name="a.step")
        one = ir.Constant(F32, 1.0)
        with _Loop(b, n, t.column_block, "jc") as (jc, nc):
            with for_range(b, depth_count, "pc") as pc_index:
                pc = b.mul(pc_index, depth_block, name="pc")
                kc = _min(b, depth_block, b.sub(k, pc), "kc")
                with b.if_then(packed):  # op(B)[p, j] is b[p*ldb + j]: a step is a row of b unless transposed
                    b.call(pack, [b_pack, b_, ldb, b.xor(b_trans, i64(1)), jc, pc, nc, kc, i64(columns)])
                beta_now = b.select(b.icmp_signed("==", pc_index, i64(0)), beta, one, name="beta.now")
                b_step = b.select(packed, i64(columns), b.select(prepacked, i64(panel_width), ldb), name="b.step")
                b_group = b.select(prepacked, b.mul(ldb, i64(panel_width)), i64(panel_width), name="b.group")
                b_ahead = self.element(b, b_, b.mul(pc, i64(panel_width)), "b.ahead")  # step pc of the first panel
                with _Loop(b, m, tile.rows, "ir") as (row, height):
                    a_tile = self.element(b, a, b.add(b.mul(row, a_row), b.mul(pc, a_step)), "a.tile")
                    with _Loop(b, nc, columns, "jr") as (jr, width):
                        column = b.add(jc, jr, name="column")
                        in_place = self.element(b, b_, b.add(b.mul(pc, ldb), column), "b.in_place")
                        first = b.udiv(column, i64(panel_width), name="b.first_panel")
                        ahead_at = b.add(b.mul(first, b_group), b.urem(column, i64(panel_width)))
                        ahead = self.element(b, b_ahead, ahead_at, "b.prepacked")
                        panel = b.select(packed, self.element(b, b_pack, b.mul(jr, kc), "b.packed"), in_place)
                        panel = b.select(prepacked, ahead, panel, name="b.panel")
                        c_tile = self.element(b, c, b.add(b.mul(row, ldc), column), "c.tile")
                        args = [kc, a_tile, a_row, a_step, panel, b_step, b_group, c_tile, ldc, height, width,
                                alpha, beta_now]  # fmt: skip
                        b.call(micro, args)
        b.call(free, [raw])
        b.ret(ir.Constant(I32, 0))
        return fn


def transpose(b: ir.IRBuilder, rows: list[ir.Value]) -> list[ir.Value]:
    """The n x n matrix held in n vectors of n lanes, transposed with two-input shuffles: at each
    of log2(n) stages, rows i and i + h swap the lanes of their off-diagonal h x h blocks."""
    n = len(rows)
    rows = list(rows)
    h = n // 2
    while h:
        for i in range(n):
            if i & h:
                continue
            upper, lower = rows[i], rows[i + h]
            keep = [lane if not lane & h else n + lane - h for lane in range(n)]
            swap = [lane + h if not lane & h else n + lane for lane in range(n)]
            index = ir.VectorType(I32, n)
            rows[i] = b.shuffle_vector(upper, lower, ir.Constant(index, keep), name=f"t{h}.{i}")
            rows[i + h] = b.shuffle_vector(upper, lower, ir.Constant(index, swap), name=f"t{h}.{i + h}")
        h //= 2
    return rows


def build_sgemm(tiling: Tiling, int_bits: int, module: ir.Module | None = None) -> ir.Module:
    """The module holding `ENTRY_SYMBOL` and `PACKED_SYMBOL` (cblas_sgemm's signature with
    `int_bits`-wide sizes)."""
    module = module if module is not None else ir.Module(name="drug_sgemm")
    builder = _Builder(module, tiling, int_bits)
    builder.entry()
    builder.packed_entry()
    builder.pack_entry()
    return module


def build_sconv(tiling: Tiling, module: ir.Module | None = None) -> ir.Module:
    """The module holding `CONV_SYMBOL` and `FILTER_SYMBOL` (64-bit sizes: drug's own signatures)."""
    module = module if module is not None else ir.Module(name="drug_sconv")
    builder = _Builder(module, tiling, 64)
    builder.conv_entry()
    builder.filter_entry()
    return module


@dataclass(frozen=True)
class RuntimeKernels:
    """The addresses the runtime table holds for float32: the sgemm every GEMM call site calls,
    the one for B packed ahead of time (`PACKED_SYMBOL`), and drug's convolution and its filter
    gradient (`CONV_SYMBOL`, `FILTER_SYMBOL`; 0 where the program has no kernel needing them)."""

    sgemm: int
    sconv: int
    sconv_filter: int
    sgemm_packed: int = 0
    sgemm_pack: int = 0  # PACK_SYMBOL


ENV = "DRUG_GEMM"  # "blas": numpy's BLAS does every GEMM (a comparison, or a way around a fault of ours)
_compiler = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="drug-kernels")


def runtime_kernels(blas: Gemm, gemms: bool, convolutions: bool) -> concurrent.futures.Future:
    """The `RuntimeKernels` as a future: drug's kernels, compiled once per process (the object code
    is cached on disk like a program's) on a thread of its own, one module for every program that
    calls any (`start_runtime_kernels`). With DRUG_GEMM=blas, GEMMs go to the BLAS and the module
    holds the convolutions alone. Slots of kernels a program does not call may hold 0."""
    none = _done(RuntimeKernels(blas.address, 0, 0))
    if os.environ.get(ENV, "drug") == "blas":
        return _compiling(blas.int_bits, blas.address, False, True) if convolutions else none
    return start_runtime_kernels(blas) if gemms or convolutions else none


def start_runtime_kernels(blas: Gemm) -> concurrent.futures.Future:
    """The module of drug's sgemm and convolutions together, loading (from the installation's
    prebuilt kernels or the compile cache) or compiling on its thread: started when drug is
    imported, so that the first compile finds it ready."""
    return _compiling(blas.int_bits, blas.address, True, True)


def _done(kernels: RuntimeKernels) -> concurrent.futures.Future:
    done: concurrent.futures.Future = concurrent.futures.Future()
    done.set_result(kernels)
    return done


@functools.cache
def _host() -> Tiling:
    """The tiling of this machine's CPU."""
    return host_tiling(jit.host_cpu()[1])


def prepacked_panel() -> int | None:
    """Columns of the panels `PACKED_SYMBOL` reads on this host, or None where GEMMs go to the
    BLAS (DRUG_GEMM=blas), which reads matrices only as they are."""
    return None if os.environ.get(ENV, "drug") == "blas" else _host().panel


def conv_tile_pixels(m: int, wo: int, depth: int) -> int:
    """Output pixels of a tile of drug's convolution of `m` output channels (per group) and rows
    `wo` wide on this host, at which its tasks cut images: whole rows where it goes by channels."""
    host = _host()
    if any(channels.applies(m, wo, depth, host.lanes) for channels in host.channels):
        return wo
    return host.conv_tile.vectors * host.lanes


def filter_scratch(o: int, wo: int, tiling: Tiling | None = None) -> int:
    """Floats of the scratch `FILTER_SYMBOL` needs for `o` output channels and rows `wo` wide (on
    this host, or with `tiling`): a block of the output gradient transposed, whole vectors each way."""
    t = tiling or _host()
    pixels = max(1, t.depth // wo) * wo
    return -(-pixels // t.lanes) * t.lanes * -(-o // t.lanes) * t.lanes


# each module of kernels asked for, once per process: (int bits, fallback, gemms, convolutions) -> it
_started: dict[tuple[int, int, bool, bool], concurrent.futures.Future] = {}


def _compiling(int_bits: int, fallback_address: int, gemms: bool, convolutions: bool) -> concurrent.futures.Future:
    key = (int_bits, fallback_address, gemms, convolutions)
    if key not in _started:
        _started[key] = _compiler.submit(compile_kernels, _host(), *key)
    return _started[key]


def _restart_in_child() -> None:
    """A child forked while the kernels thread was busy (drug's kernels load from import on) has
    no such thread: what it had not finished starts again on a thread of the child's."""
    global _compiler
    _compiler = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="drug-kernels")
    for key in [key for key, future in _started.items() if not future.done()]:
        del _started[key]


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_restart_in_child)


def _kernels(tiling: Tiling, int_bits: int, gemms: bool, convolutions: bool):
    """(key, IR builder, entry symbol) of the module of drug's kernels a program needs."""

    def build() -> str:
        module = ir.Module(name="drug_kernels")
        if gemms:
            build_sgemm(tiling, int_bits, module)
        if convolutions:
            build_sconv(tiling, module)
        return str(module)

    key = f"{ENTRY_SYMBOL}|{tiling}|int{int_bits}|gemm{int(gemms)}|conv{int(convolutions)}"
    return key, build, ENTRY_SYMBOL if gemms else CONV_SYMBOL


def compile_kernels(
    tiling: Tiling, int_bits: int, fallback_address: int, gemms: bool = True, convolutions: bool = True
) -> RuntimeKernels:
    """Machine code of the sgemm (`build_sgemm`, else the BLAS at `fallback_address`) and of the
    convolutions (`build_sconv`, else 0) in one module (one compile, from the code cache or the
    installation's prebuilt kernels when there), kept alive for the life of the process."""
    key, build, entry = _kernels(tiling, int_bits, gemms, convolutions)
    # the IR is written as it should run (explicit vectors, nothing to inline): LLVM's optimizer
    # would take half the compile time and change no instruction that matters
    compiled = jit.compile_module(key, build, entry, passes=False, prebuilt=True)
    _keep_alive.append(compiled)
    address = compiled.engine.get_function_address
    if gemms:
        slot = compiled.engine.get_global_value_address(FALLBACK_SYMBOL)
        ctypes.c_void_p.from_address(slot).value = fallback_address
    return RuntimeKernels(
        address(ENTRY_SYMBOL) if gemms else fallback_address,
        address(CONV_SYMBOL) if convolutions else 0,
        address(FILTER_SYMBOL) if convolutions else 0,
        address(PACKED_SYMBOL) if gemms else 0,
        address(PACK_SYMBOL) if gemms else 0,
    )


def prebuild_kernels(int_bits: int) -> list:
    """Every module of drug's kernels a program may need, for this machine, into the
    installation (`jit.prebuild`): the sgemm of a BLAS with `int_bits`-wide sizes with the
    convolutions, and the convolutions alone (DRUG_GEMM=blas)."""
    needs = ((True, True), (False, True))
    return [jit.prebuild(*_kernels(_host(), int_bits, gemms, conv), passes=False) for gemms, conv in needs]


_keep_alive: list = []  # the engines holding the code: freeing one would leave callers jumping into nothing
