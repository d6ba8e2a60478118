"""Convolution kernels: im2col into a column matrix holding the whole batch side by side (zero
padding and dilation in its index arithmetic), one CLBlast GEMM (batched over the groups), and
kernels moving between NCHW images and the GEMM's (channels, images * pixels) layout; the adjoint
of im2col is a gather (each input pixel sums the columns it fed), so no kernel needs atomics.
Replicate and reflect padding map each padded position to its source row and column."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ....compiler.grid import Size
from ....ops.conv import Conv2D, Conv2DGradFilter, ConvGeometry, Convolution, ConvTranspose2D, Pad, PadGrad
from ..lowering import Gemm, kernel
from ..source import c_type, literal, size


@dataclass(frozen=True)
class _Geometry(ConvGeometry):
    """A convolution's GEMM layout here (the number of images may be the batch): the column matrix
    (C*KH*KW rows, one column per output pixel of every image) and the staging matrix (O rows, the
    same columns), both in the workspace."""

    images: int | None = None  # N (None: the batch)

    @classmethod
    def of(cls, x_shape, w_shape, op: Convolution, dtype) -> _Geometry:
        return replace(super().of(x_shape, w_shape, op, dtype), images=x_shape[0])

    @property
    def width(self) -> Size:
        return Size.of([self.images]) * self.pixels

    @property
    def staging(self) -> Size:
        """Where the staging matrix starts in the workspace."""
        return self.width * self.rows

    def workspace(self):
        return (self.images, (self.rows + self.outs) * self.pixels), self.dtype


def _geometry(node) -> _Geometry:
    op = node.op
    if isinstance(op, Conv2D):
        x, w = node.inputs
        return _Geometry.of(x.shape, w.shape, op, node.dtype)
    if isinstance(op, ConvTranspose2D):
        return _Geometry.of(node.shape, node.inputs[1].shape, op, node.dtype)
    x, _ = node.inputs
    return _Geometry.of(x.shape, node.shape, op, node.dtype)


def _workspace(node):
    return _geometry(node).workspace()


def _im2col(k, node, x, geo: _Geometry) -> None:
    """columns[(c, i, j), (n, p, q)] = x[n, c, p*sh + i*dh - top, q*sw + j*dw - left] (0 in the
    padding): one work item per entry."""
    (h, w), (kh, kw), (sh, sw), (dh, dw), (_, wo) = geo.in_hw, geo.k_hw, geo.stride, geo.dilation, geo.out_hw
    (top, _), (left, _) = geo.pads
    f = k.function(geo.width * geo.rows)
    images, columns = f.read(x), f.workspace(node)
    f.lines += [
        f"    const long pixel = item % {geo.pixels};",
        f"    const long n = (item / {geo.pixels}) % {size(Size.of([geo.images]))};",
        f"    const long r = item / ({size(geo.width)});",
        f"    const long c = r / {kh * kw}, i = (r / {kw}) % {kh}, j = r % {kw};",
        f"    const long y = (pixel / {wo}) * {sh} + i * {dh} - {top}, x = (pixel % {wo}) * {sw} + j * {dw} - {left};",
        f"    const int inside = y >= 0 && y < {h} && x >= 0 && x < {w};",
        f"    {columns}[item] = inside ? {images}[((n * {geo.channels} + c) * {h} + y) * {w} + x] : "
        f"{literal(0, geo.dtype)};",
    ]


def _restage(k, node, images_node, geo: _Geometry, to_images: bool) -> None:
    """Move between NCHW images (N, O, HO*WO) and the staging matrix (O, N*HO*WO)."""
    f = k.function(geo.width * geo.outs)
    images = size(Size.of([geo.images]))
    staging = f"{f.workspace(node)}[{size(geo.staging)} + (o * {images} + n) * {geo.pixels} + pixel]"
    f.lines += [
        f"    const long pixel = item % {geo.pixels};",
        f"    const long o = (item / {geo.pixels}) % {geo.outs};",
        f"    const long n = item / ({geo.pixels * geo.outs});",
    ]
    if to_images:
        f.lines += [f"    {f.write(images_node)}[item] = {staging};"]
    else:
        f.lines += [f"    {staging} = {f.read(images_node)}[item];"]


def _strides(geo: _Geometry, a: Size, b: Size, c: Size) -> dict:
    """A GEMM batched over the groups: each operand's group blocks `a`, `b`, `c` elements apart."""
    return dict(count=Size(geo.groups), stride_a=a, stride_b=b, stride_c=c)


@kernel(Conv2D, workspace=_workspace)
def _conv2d(k, node):
    """im2col, staging[g] (O/G, N*P) = w[g] (O/G, C/G*KH*KW) @ columns[g] per group, then NCHW."""
    x, w = node.inputs
    geo = _geometry(node)
    _im2col(k, node, x, geo)
    ws = k.workspace(node)
    batched = _strides(geo, Size(geo.group_outs * geo.group_rows), geo.width * geo.group_rows,
                       geo.width * geo.group_outs)  # fmt: skip
    k.gemm(Gemm(geo.dtype, False, False, Size(geo.group_outs), geo.width, Size(geo.group_rows), k.slot(w), ws, ws,
                lda=Size(geo.group_rows), ldb=geo.width, ldc=geo.width, c_offset=geo.staging, **batched))  # fmt: skip
    _restage(k, node, node, geo, to_images=True)


@kernel(ConvTranspose2D, workspace=_workspace)
def _conv_transpose2d(k, node):
    """columns[g] = w[g]^T (C/G*KH*KW, O/G) @ g staged[g] (O/G, N*P), then each input pixel
    gathers its columns."""
    g, w = node.inputs
    geo = _geometry(node)
    _restage(k, node, g, geo, to_images=False)
    ws = k.workspace(node)
    batched = _strides(geo, Size(geo.group_outs * geo.group_rows), geo.width * geo.group_outs,
                       geo.width * geo.group_rows)  # fmt: skip
    k.gemm(Gemm(geo.dtype, True, False, Size(geo.group_rows), geo.width, Size(geo.group_outs), k.slot(w), ws, ws,
                lda=Size(geo.group_rows), ldb=geo.width, ldc=geo.width, b_offset=geo.staging, **batched))  # fmt: skip
    (h, wd), (kh, kw), (sh, sw), (ho, wo) = geo.in_hw, geo.k_hw, geo.stride, geo.out_hw
    (dh, dw), ((top, _), (left, _)) = geo.dilation, geo.pads
    f = k.function(Size.of(node.shape))
    columns, out, t = f.workspace(node), f.write(node), c_type(node.dtype)
    f.lines += [
        f"    const long x = item % {wd}, y = (item / {wd}) % {h};",
        f"    const long c = (item / {h * wd}) % {geo.channels}, n = item / {geo.channels * h * wd};",
        f"    {t} total = 0;",
        f"    for (long i = 0; i < {kh}; ++i) {{",
        f"        const long dy = y + {top} - i * {dh};",
        f"        if (dy < 0 || dy % {sh} != 0 || dy / {sh} >= {ho}) continue;",
        f"        for (long j = 0; j < {kw}; ++j) {{",
        f"            const long dx = x + {left} - j * {dw};",
        f"            if (dx < 0 || dx % {sw} != 0 || dx / {sw} >= {wo}) continue;",
        f"            const long r = (c * {kh} + i) * {kw} + j;",
        f"            total += {columns}[r * {size(geo.width)} + n * {geo.pixels} + (dy / {sh}) * {wo} + dx / {sw}];",
        "        }",
        "    }",
        f"    {out}[item] = total;",
    ]


@kernel(Conv2DGradFilter, workspace=_workspace)
def _conv2d_grad_filter(k, node):
    """dw[g] (O/G, C/G*KH*KW) = g staged[g] (O/G, N*P) @ columns[g]^T, one GEMM per group over the
    whole batch."""
    x, g = node.inputs
    geo = _geometry(node)
    _restage(k, node, g, geo, to_images=False)
    _im2col(k, node, x, geo)
    ws = k.workspace(node)
    batched = _strides(geo, geo.width * geo.group_outs, geo.width * geo.group_rows,
                       Size(geo.group_outs * geo.group_rows))  # fmt: skip
    k.gemm(Gemm(geo.dtype, False, True, Size(geo.group_outs), Size(geo.group_rows), geo.width, ws, ws, k.slot(node),
                lda=geo.width, ldb=geo.width, ldc=Size(geo.group_rows), a_offset=geo.staging, **batched))  # fmt: skip


def _source(position: str, n: int, lo: int, mode: str) -> str:
    """`ops.conv.pad_index` in C: the source row (or column) of a padded position; in zeros mode
    it may lie outside [0, n), which means a zero."""
    index = f"({position} - {lo})"
    if mode == "replicate":
        return f"clamp({index}, 0L, {n - 1}L)"
    if mode == "reflect":
        mirrored = f"abs({index})"
        return f"({mirrored} > {n - 1} ? {2 * (n - 1)} - (long){mirrored} : (long){mirrored})"
    return index


@kernel(Pad)
def _pad(k, node):
    """Each padded element reads its source (or is zero, in zeros mode)."""
    op = node.op
    (top, _), (left, _) = op.pads
    (h, w), (hp, wp) = op.in_hw, op.padded_hw()
    f = k.function(Size.of(node.shape))
    small, out = f.read(node.inputs[0]), f.write(node)
    f.lines += [
        f"    const long q = item % {wp}, p = (item / {wp}) % {hp}, plane = item / {hp * wp};",
        f"    const long y = {_source('p', h, top, op.mode)}, x = {_source('q', w, left, op.mode)};",
        f"    const int inside = y >= 0 && y < {h} && x >= 0 && x < {w};",
        f"    {out}[item] = inside ? {small}[(plane * {h} + y) * {w} + x] : {literal(0, node.dtype)};",
    ]


def _padded_positions(name: str, source: str, n: int, lo: int, hi: int, mode: str) -> list[str]:
    """C lines opening a loop over the padded positions `name` whose source is `source`: the
    interior one, then (except in zeros mode) the border positions copying it."""
    borders = 0 if mode == "zeros" else lo + hi
    return [
        f"for (long {name}_k = 0; {name}_k <= {borders}; ++{name}_k) {{",
        f"    const long {name} = {name}_k == 0 ? {source} + {lo} : "
        f"({name}_k <= {lo} ? {name}_k - 1 : {n} + {name}_k - 1);",
        f"    if ({name}_k > 0 && {_source(name, n, lo, mode)} != {source}) continue;",
    ]


@kernel(PadGrad)
def _pad_grad(k, node):
    """Each unpadded element sums the padded elements that copied it (the interior one and, for
    replicate and reflect, border ones)."""
    op = node.op
    (top, bottom), (left, right) = op.pads
    (h, w), (hp, wp) = op.in_hw, op.padded_hw()
    f = k.function(Size.of(node.shape))
    g, out, t = f.read(node.inputs[0]), f.write(node), c_type(node.dtype)
    rows = _padded_positions("p", "y", h, top, bottom, op.mode)
    cols = _padded_positions("q", "x", w, left, right, op.mode)
    f.lines += [
        f"    const long x = item % {w}, y = (item / {w}) % {h}, plane = item / {h * w};",
        f"    {t} total = 0;",
        *("    " + line for line in rows),
        *("        " + line for line in cols),
        f"            total += {g}[(plane * {hp} + p) * {wp} + q];",
        "        }",
        "    }",
        f"    {out}[item] = total;",
    ]
