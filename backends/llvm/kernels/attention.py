"""Kernels of attention and its gradient (ops/attention.py), FlashAttention's scheme on the CPU.

The (batch, head) pairs are shared out over the threads; each thread works through its pairs a
block of queries at a time, with scratch for one block of scores (QUERY_BLOCK x KEY_BLOCK) and
its running softmax statistics, so the (T, T) scores of a whole batch never exist at once. The
block products are BLAS calls on the thread (q k^T, p v, and in the backward pass the four
products of the gradients); masking, the exponentials and the online softmax are vectorized
loops over a row of the block. The backward pass recomputes the scores: per query block, the
row log-sum-exp first (a pass over the key blocks, skipped when one block holds every key),
then the gradients. A thread owns every row of its pairs, so dq, dk and dv accumulate in place
(GEMMs with beta = 1) without races. Causal attention skips the key blocks a query block
cannot see. Rows no key may attend to have zero probabilities (and output).

Both layouts are strides: (batch, heads, time, dim) and (batch, time, heads, dim) differ only
in where a (batch, head) pair starts and how far apart its rows are."""

from __future__ import annotations

import math
from dataclasses import dataclass

from llvmlite import ir

from ....core.node import Node
from ....ops.attention import PACKED, Attention, AttentionGrad
from ....ops.multi import Result
from ..irutil import I32, dim_value, for_range, i64, llvm_type
from ..lowering import kernel
from ..threads import thread_slots
from .nn import entry_alloca

QUERY_BLOCK = 64
KEY_BLOCK = 256
PAIRS_MIN_WORK = 1 << 16  # multiply-adds of q k^T: below this one thread takes every pair


@dataclass(frozen=True)
class _Heads:
    """Where the rows of one (batch, head) pair of a tensor are: element offsets per batch, per
    head and per row (time step), and where the tensor starts in its buffer (a packed input's
    k and v parts start one and two parts in)."""

    heads: int
    time: int
    dim: int
    per_batch: int
    per_head: int
    row_stride: int
    offset: int = 0

    def start(self, b: ir.IRBuilder, batch: ir.Value, head: ir.Value) -> ir.Value:
        """Element offset of row 0 of the pair (batch, head)."""
        pair = b.add(b.mul(batch, i64(self.per_batch)), b.mul(head, i64(self.per_head)), name="pair_start")
        return b.add(pair, i64(self.offset), name="part_start") if self.offset else pair


def _heads(node: Node, layout: str, part: int = 0) -> _Heads:
    """The rows of `node` in `layout` ("bhtd", "bthd", or part `part` of a packed (batch, time, 3,
    heads, dim) node)."""
    if layout == PACKED:
        _, time, _, heads, dim = node.shape
        return _Heads(heads, time, dim, 3 * time * heads * dim, dim, 3 * heads * dim, part * heads * dim)
    _, first, second, dim = node.shape
    if layout == "bhtd":
        return _Heads(first, second, dim, first * second * dim, second * dim, dim)
    return _Heads(second, first, dim, first * second * dim, dim, second * dim)


def _operands(node: Node) -> tuple[list[Node], list[_Heads], list[Node]]:
    """([q, k, v] nodes, their rows, the remaining inputs) of an attention or attention_grad node."""
    layout = node.op.layout
    if layout == PACKED:
        qkv = node.inputs[0]
        return [qkv] * 3, [_heads(qkv, layout, i) for i in range(3)], list(node.inputs[1:])
    q, k, v = node.inputs[:3]
    return [q, k, v], [_heads(t, layout) for t in (q, k, v)], list(node.inputs[3:])


@dataclass(frozen=True)
class _Mask:
    """The mask's element strides along (batch, head, query, key) (0 where it broadcasts)."""

    node: Node
    strides: tuple[int, int, int, int]
    is_bool: bool

    @staticmethod
    def of(node: Node | None, is_bool: bool) -> _Mask | None:
        if node is None:
            return None
        shape = (1,) * (4 - node.ndim) + tuple(node.shape)
        strides, acc = [], 1
        for d in reversed(shape):
            strides.append(0 if d == 1 else acc)
            acc *= 1 if d is None else d
        return _Mask(node, tuple(reversed(strides)), is_bool)


class _Block:
    """The code one thread runs for its (batch, head) pairs; shared by forward and backward."""

    def __init__(self, ctx, node: Node, mask: Node | None):
        self.ctx, self.b, self.node, self.op = ctx, ctx.b, node, node.op
        (self.q, self.k, self.v), (self.qh, self.kh, self.vh), _ = _operands(node)
        q = self.q
        self.dtype = q.dtype
        self.real = llvm_type(q.dtype)
        self.f = ctx.scalar(q)
        op = self.op
        self.tq, self.tk = self.qh.time, self.kh.time
        self.bq, self.bk = min(QUERY_BLOCK, self.tq), min(KEY_BLOCK, self.tk)
        self.mask = _Mask.of(mask, op.mask == "bool")

    def scratch(self, elements: int) -> ir.Value:
        """This thread's part of the kernel's workspace (`elements` long, one part per pool thread)."""
        thread = self.ctx.thread()
        return self.at(
            self.ctx.workspace(self.node), self.b.mul(thread, i64(elements), name="scratch_offset"), "scratch"
        )

    def at(self, pointer: ir.Value, offset: ir.Value, name: str = "at") -> ir.Value:
        return self.b.gep(pointer, [offset], source_etype=self.real, inbounds=True, name=name)

    def get(self, pointer: ir.Value, offset: ir.Value, name: str = "") -> ir.Value:
        return self.b.load(self.at(pointer, offset), typ=self.real, name=name)

    def put(self, pointer: ir.Value, offset: ir.Value, value: ir.Value) -> None:
        self.b.store(value, self.at(pointer, offset))

    def block_size(self, start: ir.Value, total: int | ir.Value, block: int, name: str) -> ir.Value:
        """min(block, total - start): a block starting at `start` (the last one may be short)."""
        b = self.b
        left = b.sub(i64(total) if isinstance(total, int) else total, start, name=f"{name}.left")
        return b.select(b.icmp_signed("<", left, i64(block)), left, i64(block), name=name)

    def key_end(self, i0: ir.Value, rows: ir.Value) -> ir.Value:
        """Keys past this are masked for every query of the block (causal), else all keys."""
        if not self.op.causal:
            return i64(self.tk)
        b = self.b
        end = b.add(i0, rows, name="causal_end")
        return b.select(b.icmp_signed("<", end, i64(self.tk)), end, i64(self.tk), name="key_end")

    def scores(self, pair: tuple, i0, rows, j0, cols, scratch: ir.Value) -> None:
        """scratch[r, c] = scale * q_(i0+r) . k_(j0+c) (+ mask), -inf where masked."""
        b, ctx, f = self.b, self.ctx, self.f
        q_start, k_start, batch, head = pair
        ctx.gemm(
            self.dtype, False, True, rows, cols, i64(self.qh.dim),
            ctx.element(self.q, b.add(q_start, b.mul(i0, i64(self.qh.row_stride)))), i64(self.qh.row_stride),
            ctx.element(self.k, b.add(k_start, b.mul(j0, i64(self.kh.row_stride)))), i64(self.kh.row_stride),
            scratch, i64(self.bk),
        )  # fmt: skip
        scale, minus_inf = f.const(self.op.scale), f.const(-math.inf)
        mask = self.mask
        if mask is not None:
            sb, sh, sq, sk = mask.strides
            mask_start = b.add(b.mul(batch, i64(sb)), b.mul(head, i64(sh)), name="mask_start")
        with for_range(b, rows, "r") as r:
            i = b.add(i0, r, name="i")
            with for_range(b, cols, "c") as c:
                j = b.add(j0, c, name="j")
                at = b.add(b.mul(r, i64(self.bk)), c, name="s_at")
                s = f.mul(self.get(scratch, at), scale)
                keep = ir.Constant(ir.IntType(1), 1)
                if mask is not None:
                    offset = b.add(mask_start, b.add(b.mul(i, i64(sq)), b.mul(j, i64(sk))), name="mask_at")
                    value = ctx.load(mask.node, offset)
                    if mask.is_bool:
                        keep = b.icmp_unsigned("!=", value, ir.Constant(value.type, 0), name="keep")
                    else:
                        s = f.add(s, value)
                if self.op.causal:
                    keep = b.and_(keep, b.icmp_signed("<=", j, i), name="causal")
                self.put(scratch, at, b.select(keep, s, minus_inf))

    def row_max(self, scratch, r, cols) -> ir.Value:
        f = self.f
        slot = entry_alloca(self.b, self.real, "row_max")
        self.b.store(f.const(-math.inf), slot)
        with for_range(self.b, cols, "c") as c:
            value = self.get(scratch, self.b.add(self.b.mul(r, i64(self.bk)), c))
            self.b.store(f.maximum(self.b.load(slot), value), slot)
        return self.b.load(slot, name="max")

    def exp_row(self, scratch, r, cols, shift, total: bool) -> ir.Value | None:
        """scratch[r, c] = exp(scratch[r, c] - shift); returns the row's sum if `total`."""
        b, f = self.b, self.f
        slot = entry_alloca(b, self.real, "row_sum") if total else None
        if slot is not None:
            b.store(f.const(0.0), slot)
        with for_range(b, cols, "c") as c:
            at = b.add(b.mul(r, i64(self.bk)), c)
            p = f.exp(f.sub(self.get(scratch, at), shift))
            self.put(scratch, at, p)
            if slot is not None:
                b.store(f.accumulate("add", b.load(slot), p), slot)
        return b.load(slot, name="sum") if slot is not None else None

    def safe(self, m: ir.Value) -> ir.Value:
        """0 for a row max of -inf (a fully masked row), so that exp(s - m) is 0, not NaN."""
        f = self.f
        return self.b.select(f.compare("==", m, f.const(-math.inf)), f.const(0.0), m, name="m_safe")


def _pairs(k, q: Node, qh: _Heads) -> tuple[ir.Value, ir.Value]:
    """(pairs, worth): the number of (batch, head) pairs and whether to share them out."""
    b = k.b
    batch = dim_value(q.shape[0], k.batch)
    pairs = b.mul(batch, i64(qh.heads), name="pairs")
    work = b.mul(pairs, i64(qh.time * qh.time * qh.dim), name="work")
    worth = b.and_(b.icmp_signed(">=", pairs, i64(2)), b.icmp_signed(">=", work, i64(PAIRS_MIN_WORK)), name="worth")
    return pairs, worth


def _pair(block: _Block, p: ir.Value, *tensors: _Heads) -> tuple:
    """(batch, head, start offset per tensor) of pair p."""
    b = block.b
    heads = i64(block.qh.heads)
    batch, head = b.sdiv(p, heads, name="batch"), b.srem(p, heads, name="head")
    return batch, head, [t.start(b, batch, head) for t in tensors]


def _forward_scratch(bq: int, bk: int, dv: int) -> int:
    """Elements of a thread's scratch in the forward pass: a block of scores, the (bq, dv) running
    p v, and the running max and sum of each query row."""
    return bq * bk + bq * dv + 2 * bq


def _backward_scratch(bq: int, bk: int, tq: int, tk: int, d: int, dv: int) -> int:
    """... in the backward pass: blocks of p and dp, the log-sum-exp and g.out of each query row,
    and room for a (batch, head) pair's dq, dk, dv (for a gradient nobody reads)."""
    return 2 * bq * bk + 2 * bq + tq * d + tk * d + tk * dv


def _workspace(node: Node, backward: bool):
    """One scratch part per thread of the pool (the thread count is part of the compiled
    code's key, through the buffer sizes)."""
    (q, _, _), (qh, kh, vh), _ = _operands(node)
    bq, bk = min(QUERY_BLOCK, qh.time), min(KEY_BLOCK, kh.time)
    if backward:
        per_thread = _backward_scratch(bq, bk, qh.time, kh.time, qh.dim, vh.dim)
    else:
        per_thread = _forward_scratch(bq, bk, vh.dim)
    return (thread_slots() * per_thread,), q.dtype


@kernel(Attention, uses_blas=True, workspace=lambda node: _workspace(node, backward=False))
def _attention(k, node):
    (q, _, _), (qh, _, _), rest = _operands(node)
    mask = rest[0] if rest else None
    pairs, worth = _pairs(k, q, qh)

    def span(ctx, lo, hi):
        return _forward_span(_Block(ctx, node, mask), lo, hi)

    k.parallel_for("pairs", pairs, span, worth)


def _forward_span(blk: _Block, lo: ir.Value, hi: ir.Value) -> ir.Value:
    b, ctx, f = blk.b, blk.ctx, blk.f
    oh = _heads(blk.node, blk.op.inputs_layout)
    dv = blk.vh.dim
    scratch = blk.scratch(_forward_scratch(blk.bq, blk.bk, dv))
    acc = blk.at(scratch, i64(blk.bq * blk.bk), "acc")  # (bq, dv) running p v
    running_max = blk.at(scratch, i64(blk.bq * blk.bk + blk.bq * dv), "running_max")
    running_sum = blk.at(scratch, i64(blk.bq * blk.bk + blk.bq * dv + blk.bq), "running_sum")
    with for_range(b, hi, "pair", start=lo) as p:
        batch, head, (q_start, k_start, v_start, o_start) = _pair(blk, p, blk.qh, blk.kh, blk.vh, oh)
        with for_range(b, i64(-(-blk.tq // blk.bq)), "qblock") as qb:
            i0 = b.mul(qb, i64(blk.bq), name="i0")
            rows = blk.block_size(i0, blk.tq, blk.bq, "rows")
            with for_range(b, rows, "init") as r:
                blk.put(running_max, r, f.const(-math.inf))
                blk.put(running_sum, r, f.const(0.0))
                with for_range(b, i64(dv), "c") as c:
                    blk.put(acc, b.add(b.mul(r, i64(dv)), c), f.const(0.0))
            key_end = blk.key_end(i0, rows)
            blocks = b.sdiv(b.add(key_end, i64(blk.bk - 1)), i64(blk.bk), name="key_blocks")
            with for_range(b, blocks, "kblock") as kb:
                j0 = b.mul(kb, i64(blk.bk), name="j0")
                cols = blk.block_size(j0, key_end, blk.bk, "cols")  # causal: up to the block's last query
                blk.scores((q_start, k_start, batch, head), i0, rows, j0, cols, scratch)
                with for_range(b, rows, "r") as r:
                    old = blk.get(running_max, r, "old_max")
                    new = f.maximum(old, blk.row_max(scratch, r, cols))
                    shift = blk.safe(new)
                    decay = f.exp(f.sub(old, shift))  # 0 while the row had no key yet
                    total = blk.exp_row(scratch, r, cols, shift, total=True)
                    blk.put(running_sum, r, f.add(f.mul(blk.get(running_sum, r), decay), total))
                    blk.put(running_max, r, new)
                    with for_range(b, i64(dv), "c") as c:
                        at = b.add(b.mul(r, i64(dv)), c)
                        blk.put(acc, at, f.mul(blk.get(acc, at), decay))
                ctx.gemm(
                    blk.dtype, False, False, rows, i64(dv), cols, scratch, i64(blk.bk),
                    ctx.element(blk.v, b.add(v_start, b.mul(j0, i64(blk.vh.row_stride)))), i64(blk.vh.row_stride),
                    acc, i64(dv), beta=1.0,
                )  # fmt: skip
            with for_range(b, rows, "r") as r:
                total = blk.get(running_sum, r)
                inverse = b.select(f.compare(">", total, f.const(0.0)), f.div(f.const(1.0), total), f.const(0.0))
                row = b.add(o_start, b.mul(b.add(i0, r), i64(oh.row_stride)), name="out_row")
                with for_range(b, i64(dv), "c") as c:
                    ctx.store(blk.node, b.add(row, c), f.mul(blk.get(acc, b.add(b.mul(r, i64(dv)), c)), inverse))
    return ir.Constant(I32, 0)


@kernel(AttentionGrad, uses_blas=True, workspace=lambda node: _workspace(node, backward=True))
def _attention_grad(k, node):
    (q, _, _), (qh, _, _), rest = _operands(node)
    out, g = rest[:2]
    mask = rest[2] if len(rest) > 2 else None
    results = {n.op.index: n for n in k.schedule.program.nodes if isinstance(n.op, Result) and n.inputs[0] is node}
    if node.op.layout == PACKED and 0 in results:  # one result: dq, dk and dv are its three parts
        results = dict.fromkeys(range(3), results[0])
    pairs, worth = _pairs(k, q, qh)

    def span(ctx, lo, hi):
        return _backward_span(_Block(ctx, node, mask), out, g, results, lo, hi)

    k.parallel_for("pairs", pairs, span, worth)


def _backward_span(blk: _Block, out: Node, g: Node, results: dict, lo, hi) -> ir.Value:
    b, ctx, f = blk.b, blk.ctx, blk.f
    oh = _heads(out, blk.op.inputs_layout)
    qh, kh, vh = blk.qh, blk.kh, blk.vh
    block = blk.bq * blk.bk
    scratch = blk.scratch(_backward_scratch(blk.bq, blk.bk, blk.tq, blk.tk, qh.dim, vh.dim))
    probs, dprobs = scratch, blk.at(scratch, i64(block), "dprobs")
    lse = blk.at(scratch, i64(2 * block), "lse")
    dot = blk.at(scratch, i64(2 * block + blk.bq), "dot")  # per row: sum(g * out)
    offset, private = 2 * block + 2 * blk.bq, {}  # results nobody reads still get computed: into scratch
    for i, h in enumerate((qh, kh, vh)):
        private[i] = blk.at(scratch, i64(offset), f"private{i}")
        offset += h.time * h.dim
    single = blk.tk <= blk.bk  # one key block: the log-sum-exp comes with the gradient pass
    with for_range(b, hi, "pair", start=lo) as p:
        batch, head, (q_start, k_start, v_start, o_start) = _pair(blk, p, qh, kh, vh, oh)
        starts = (q_start, k_start, v_start)
        grads = []  # (pointer to row 0 of the pair's gradient, row stride) for dq, dk, dv
        for i, h in enumerate((qh, kh, vh)):
            if i in results:
                grads.append((ctx.element(results[i], starts[i]), h.row_stride))
            else:
                grads.append((private[i], h.dim))
        for (pointer, stride), h in zip(grads, (qh, kh, vh)):
            with for_range(b, i64(h.time), "zero.t") as t, for_range(b, i64(h.dim), "zero.c") as c:
                blk.put(pointer, b.add(b.mul(t, i64(stride)), c), f.const(0.0))
        (dq, ldq), (dk, ldk), (dv, ldv) = grads
        with for_range(b, i64(-(-blk.tq // blk.bq)), "qblock") as qb:
            i0 = b.mul(qb, i64(blk.bq), name="i0")
            rows = blk.block_size(i0, blk.tq, blk.bq, "rows")
            with for_range(b, rows, "r") as r:  # dot[r] = g_i . out_i
                row = b.add(o_start, b.mul(b.add(i0, r), i64(oh.row_stride)), name="o_row")
                slot = entry_alloca(b, blk.real, "dot_acc")
                b.store(f.const(0.0), slot)
                with for_range(b, i64(oh.dim), "c") as c:
                    at = b.add(row, c)
                    b.store(f.accumulate("add", b.load(slot), f.mul(ctx.load(g, at), ctx.load(out, at))), slot)
                blk.put(dot, r, b.load(slot))
            key_end = blk.key_end(i0, rows)
            blocks = b.sdiv(b.add(key_end, i64(blk.bk - 1)), i64(blk.bk), name="key_blocks")
            pair = (q_start, k_start, batch, head)
            if not single:
                _log_sum_exp(blk, pair, i0, rows, blocks, key_end, probs, lse, dprobs)
            with for_range(b, blocks, "kblock") as kb:
                j0 = b.mul(kb, i64(blk.bk), name="j0")
                cols = blk.block_size(j0, key_end, blk.bk, "cols")  # causal: up to the block's last query
                blk.scores(pair, i0, rows, j0, cols, probs)
                with for_range(b, rows, "r") as r:
                    if single:  # p = exp(s - max) / sum
                        shift = blk.safe(blk.row_max(probs, r, cols))
                        total = blk.exp_row(probs, r, cols, shift, total=True)
                        positive = f.compare(">", total, f.const(0.0))
                        inverse = b.select(positive, f.div(f.const(1.0), total), f.const(0.0), name="inverse")
                        with for_range(b, cols, "c") as c:
                            at = b.add(b.mul(r, i64(blk.bk)), c)
                            blk.put(probs, at, f.mul(blk.get(probs, at), inverse))
                    else:
                        blk.exp_row(probs, r, cols, blk.get(lse, r), total=False)
                ctx.gemm(  # dv_j += p^T g_i
                    blk.dtype, True, False, cols, i64(vh.dim), rows, probs, i64(blk.bk),
                    ctx.element(g, b.add(o_start, b.mul(i0, i64(oh.row_stride)))), i64(oh.row_stride),
                    blk.at(dv, b.mul(j0, i64(ldv))), i64(ldv), beta=1.0,
                )  # fmt: skip
                ctx.gemm(  # dp = g_i v_j^T
                    blk.dtype, False, True, rows, cols, i64(vh.dim),
                    ctx.element(g, b.add(o_start, b.mul(i0, i64(oh.row_stride)))), i64(oh.row_stride),
                    ctx.element(blk.v, b.add(v_start, b.mul(j0, i64(vh.row_stride)))), i64(vh.row_stride),
                    dprobs, i64(blk.bk),
                )  # fmt: skip
                scale = f.const(blk.op.scale)
                with for_range(b, rows, "r") as r:
                    row_dot = blk.get(dot, r)
                    with for_range(b, cols, "c") as c:  # ds = p (dp - dot) * scale, in place of dp
                        at = b.add(b.mul(r, i64(blk.bk)), c)
                        ds = f.mul(f.mul(blk.get(probs, at), f.sub(blk.get(dprobs, at), row_dot)), scale)
                        blk.put(dprobs, at, ds)
                ctx.gemm(  # dq_i += ds k_j
                    blk.dtype, False, False, rows, i64(qh.dim), cols, dprobs, i64(blk.bk),
                    ctx.element(blk.k, b.add(k_start, b.mul(j0, i64(kh.row_stride)))), i64(kh.row_stride),
                    blk.at(dq, b.mul(i0, i64(ldq))), i64(ldq), beta=1.0,
                )  # fmt: skip
                ctx.gemm(  # dk_j += ds^T q_i
                    blk.dtype, True, False, cols, i64(kh.dim), rows, dprobs, i64(blk.bk),
                    ctx.element(blk.q, b.add(q_start, b.mul(i0, i64(qh.row_stride)))), i64(qh.row_stride),
                    blk.at(dk, b.mul(j0, i64(ldk))), i64(ldk), beta=1.0,
                )  # fmt: skip
    return ir.Constant(I32, 0)


def _lse(blk: _Block, shift: ir.Value, total: ir.Value) -> ir.Value:
    """shift + log(total); +inf for a fully masked row (total 0), so exp(s - lse) is 0 there."""
    f = blk.f
    return blk.b.select(f.compare(">", total, f.const(0.0)), f.add(shift, f.log(total)), f.const(math.inf))


def _log_sum_exp(blk: _Block, pair, i0, rows, blocks, blocks_end, scratch, lse, sums) -> None:
    """lse[r] over every key block (online), with running sums in `sums`: the first pass of the
    backward pass when the keys do not fit one block."""
    b, f = blk.b, blk.f
    with for_range(b, rows, "r") as r:
        blk.put(lse, r, f.const(-math.inf))  # the running max, then the result
        blk.put(sums, r, f.const(0.0))
    with for_range(b, blocks, "lse.kblock") as kb:
        j0 = b.mul(kb, i64(blk.bk), name="j0")
        cols = blk.block_size(j0, blocks_end, blk.bk, "cols")
        blk.scores(pair, i0, rows, j0, cols, scratch)
        with for_range(b, rows, "r") as r:
            old = blk.get(lse, r)
            new = f.maximum(old, blk.row_max(scratch, r, cols))
            shift = blk.safe(new)
            total = blk.exp_row(scratch, r, cols, shift, total=True)
            blk.put(sums, r, f.add(f.mul(blk.get(sums, r), f.exp(f.sub(old, shift))), total))
            blk.put(lse, r, new)
    with for_range(b, rows, "r") as r:
        blk.put(lse, r, _lse(blk, blk.safe(blk.get(lse, r)), blk.get(sums, r)))
