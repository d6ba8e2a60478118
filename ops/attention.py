"""Scaled dot-product attention with PyTorch's `scaled_dot_product_attention` semantics:
softmax(q k^T * scale + mask) v per batch and head, scale 1/sqrt(d) by default, `causal` masking
key j > query i, a bool mask marking the pairs that take part (True) or a float mask added to
the scores. A query that no key may attend to gets zeros (as PyTorch gives).

The native kernels never hold the (T, T) scores of more than one block of queries per thread:
the forward pass runs a blocked online softmax, the backward pass recomputes the scores block by
block (FlashAttention's scheme). The backward op has three results (dq, dk, dv)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..core.errors import ShapeError
from ..core.node import Node, apply, user_call
from ..core.op import Example, Op, same_float_dtype
from ..core.types import BOOL, FLOAT_DTYPES, Shape, TensorType, broadcast_shapes, format_shape
from .multi import result

LAYOUTS = ("bhtd", "bthd")  # (batch, heads, time, dim) like PyTorch; (batch, time, heads, dim) as projected
PACKED = "packed"  # one input (batch, time, 3, heads, dim): q, k and v of self-attention from one projection


def canonical(x: np.ndarray, layout: str) -> np.ndarray:
    """The (batch, heads, time, dim) view of an array in `layout`."""
    return x if layout == "bhtd" else np.swapaxes(x, 1, 2)


def _dims(shape: Shape, layout: str) -> tuple:
    """(batch, heads, time, dim) of a shape in `layout`."""
    b, first, second, d = shape
    return (b, first, second, d) if layout == "bhtd" else (b, second, first, d)


class _AttentionBase(Op):
    def __init__(self, causal: bool, scale: float, layout: str, mask: str | None):
        self.causal, self.scale, self.layout, self.mask = bool(causal), float(scale), layout, mask

    @property
    def inputs_layout(self) -> str:
        """The layout q, k and v are read in: a packed input holds three (batch, time, heads, dim) parts."""
        return "bthd" if self.layout == PACKED else self.layout

    def unpack_types(self, inputs: tuple) -> tuple[list[TensorType], tuple]:
        """([q, k, v] types, the rest of the inputs)."""
        if self.layout != PACKED:
            return list(inputs[:3]), inputs[3:]
        qkv = inputs[0]
        if qkv.ndim != 5 or qkv.shape[2] != 3:
            raise ShapeError(f"a packed input must be (batch, time, 3, heads, dim), got {format_shape(qkv.shape)}")
        part = TensorType(qkv.shape[:2] + qkv.shape[3:], qkv.dtype)
        return [part, part, part], inputs[1:]

    def unpack(self, arrays: tuple) -> tuple[list[np.ndarray], tuple]:
        """([q, k, v] in (batch, heads, time, dim), the rest of the inputs)."""
        if self.layout == PACKED:
            parts, rest = [arrays[0][:, :, i] for i in range(3)], arrays[1:]
        else:
            parts, rest = list(arrays[:3]), arrays[3:]
        return [canonical(a, self.inputs_layout) for a in parts], rest

    def check(self, q: TensorType, k: TensorType, v: TensorType, mask: TensorType | None) -> None:
        dtype = same_float_dtype(self.name, [q, k, v])
        if self.layout not in LAYOUTS + (PACKED,):
            raise ShapeError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        layout = self.inputs_layout
        if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
            raise ShapeError(f"q, k and v must be 4-D ({layout}), got {q.ndim}, {k.ndim} and {v.ndim} axes")
        (bq, hq, tq, dq), (bk, hk, tk, dk), (bv, hv, tv, _) = (_dims(t.shape, layout) for t in (q, k, v))
        if (bq, hq) != (bk, hk) or (bk, hk, tk) != (bv, hv, tv) or dq != dk:
            raise ShapeError(
                f"q {format_shape(q.shape)}, k {format_shape(k.shape)} and v {format_shape(v.shape)} do not fit "
                f"({layout}: q and k share batch, heads and dim; k and v share batch, heads and time)"
            )
        if None in (hq, tq, tk, dq, _dims(v.shape, layout)[3]):
            raise ShapeError("only the batch axis may be None")
        if mask is None:
            return
        expected = "bool" if mask.dtype == BOOL else "float" if mask.dtype == dtype else None
        if expected is None:
            raise ShapeError(f"the mask must be bool or {dtype} like q, got {mask.dtype}")
        scores = (bq, hq, tq, tk)
        try:
            fits = mask.ndim <= 4 and broadcast_shapes([mask.shape, scores]) == scores
        except ShapeError:
            fits = False
        if not fits:
            raise ShapeError(
                f"the mask {format_shape(mask.shape)} does not broadcast to the scores "
                f"(batch, heads, query time, key time) {format_shape(scores)}"
            )

    def params(self) -> dict[str, Any]:
        return {"causal": self.causal, "scale": self.scale, "layout": self.layout, "mask": self.mask}

    def _scores(self, q, k, mask) -> tuple[np.ndarray, np.ndarray]:
        """Scaled, masked scores (-inf where masked) in (batch, heads, tq, tk)."""
        s = np.matmul(q, np.swapaxes(k, -1, -2)) * np.asarray(self.scale, q.dtype)
        allowed = np.ones(s.shape, bool)
        if mask is not None and mask.dtype == BOOL:
            allowed &= mask
        elif mask is not None:
            s = s + mask
        if self.causal:
            allowed &= np.tril(np.ones(s.shape[-2:], bool))
        return np.where(allowed, s, -np.inf)

    def _probabilities(self, s: np.ndarray) -> np.ndarray:
        """Row softmax of masked scores; rows with no key that takes part are zero."""
        m = s.max(axis=-1, keepdims=True)
        e = np.exp(s - np.where(np.isfinite(m), m, 0))
        total = e.sum(axis=-1, keepdims=True)
        return e / np.where(total > 0, total, 1)


class Attention(_AttentionBase):
    """Inputs q, k, v (and the mask, if any); the output has q's layout with v's dim."""

    name = "attention"

    def infer(self, *inputs):
        (q, k, v), mask = self.unpack_types(inputs)
        if len(mask) != (self.mask is not None):
            raise ShapeError(f"expected {'a mask' if self.mask else 'no mask'}, got {len(mask)}")
        self.check(q, k, v, mask[0] if mask else None)
        return TensorType(q.shape[:3] + (v.shape[3],), q.dtype)

    def ref(self, *arrays):
        (q, k, v), mask = self.unpack(arrays)
        p = self._probabilities(self._scores(q, k, mask[0] if mask else None))
        return canonical(np.matmul(p, v), self.inputs_layout)

    def grad(self, g, out, *inputs):
        n = 1 if self.layout == PACKED else 3
        op = AttentionGrad(self.causal, self.scale, self.layout, self.mask, tuple(i.type for i in inputs[:n]))
        grads = apply(op, *inputs[:n], out, g, *inputs[n:])
        return [result(grads, i) for i in range(n)] + [None] * (len(inputs) - n)

    @classmethod
    def example(cls, rng, dims):
        layout = LAYOUTS[dims[0] % 2]
        batch, heads, tq, tk, d = dims[0], 2, dims[1] + 1, dims[2] + 2, 3
        shape = (lambda t, dim: (batch, heads, t, dim)) if layout == "bhtd" else (lambda t, dim: (batch, t, heads, dim))
        q, k, v = (
            rng.standard_normal(shape(tq, d)),
            rng.standard_normal(shape(tk, d)),
            rng.standard_normal(shape(tk, 4)),
        )
        kind = ("bool", "float", None)[(dims[1] + dims[2]) % 3]
        inputs, differentiable = [q, k, v], [True, True, True]
        if kind == "bool":  # per batch and key: the padding mask of a batch of sequences
            inputs.append(rng.uniform(size=(batch, 1, 1, tk)) < 0.7)
        elif kind == "float":
            inputs.append(rng.standard_normal((heads, tq, tk)))
        differentiable += [False] * (len(inputs) - 3)
        op = cls(bool(dims[2] % 2), 1.0 / math.sqrt(d), layout, kind)
        return op, Example(inputs, differentiable, {0: 0, 1: 0, 2: 0} | ({3: 0} if kind == "bool" else {}))


class AttentionGrad(_AttentionBase):
    """(dq, dk, dv) from q, k, v, the forward output and its cotangent (and the mask): results
    0, 1, 2 (picked by `result` nodes); with a packed input, one result, d(qkv)."""

    name = "attention_grad"
    multi_output = True

    def __init__(self, causal, scale, layout, mask, types: tuple[TensorType, ...]):
        super().__init__(causal, scale, layout, mask)
        self.types = tuple(types)  # of q, k and v (or of the packed input): the results'

    def params(self) -> dict[str, Any]:
        return super().params() | {"types": self.types}

    def infer(self, *inputs):
        n = len(self.types)
        (q, k, v), rest = self.unpack_types(inputs[:n] + inputs[n + 2 :])
        out, g = inputs[n : n + 2]
        self.check(q, k, v, rest[0] if rest else None)
        if tuple(inputs[:n]) != self.types or out.shape != g.shape:
            raise ShapeError("inputs do not match the attention they differentiate")
        return TensorType((), q.dtype)  # a token: the results are `result` nodes

    def output_types(self) -> list[TensorType]:
        return list(self.types)

    def ref(self, *arrays):
        n = len(self.types)
        (q, k, v), mask = self.unpack(arrays[:n] + arrays[n + 2 :])
        out, g = (canonical(a, self.inputs_layout) for a in arrays[n : n + 2])
        p = self._probabilities(self._scores(q, k, mask[0] if mask else None))
        dv = np.matmul(np.swapaxes(p, -1, -2), g)
        dp = np.matmul(g, np.swapaxes(v, -1, -2))
        ds = p * (dp - np.sum(g * out, axis=-1, keepdims=True)) * np.asarray(self.scale, q.dtype)
        dq, dk = np.matmul(ds, k), np.matmul(np.swapaxes(ds, -1, -2), q)
        grads = [canonical(a, self.inputs_layout) for a in (dq, dk, dv)]
        return (np.stack(grads, axis=2),) if self.layout == PACKED else tuple(grads)


@user_call()
def attention(
    q: Node,
    k: Node,
    v: Node,
    mask: Node | np.ndarray | None = None,
    causal: bool = False,
    scale: float | None = None,
    layout: str = "bhtd",
) -> Node:
    """softmax(q k^T * scale + mask) v per batch and head, with
    torch.nn.functional.scaled_dot_product_attention's semantics. A query no key may attend to
    gets zeros. The native kernels never hold more than one block of scores per thread: a
    blocked online softmax forward and a backward that recomputes the scores (FlashAttention).

    Args:
        q: Queries (batch, heads, Tq, d) (with layout="bthd": (batch, Tq, heads, d)).
        k: Keys, (batch, heads, Tk, d) in the same layout.
        v: Values, (batch, heads, Tk, dv) in the same layout.
        mask: None, a bool node marking the (query, key) pairs that take part (True), or a float
            node added to the scores; either broadcasts to (batch, heads, Tq, Tk). Masks get no
            gradient.
        causal: Mask key j > query i (top-left aligned, like PyTorch's is_causal).
        scale: The factor of the scores; default 1/sqrt(d).
        layout: "bhtd" (PyTorch's) or "bthd" (what x @ w reshaped to heads already is: no
            transposes).

    Returns:
        The output in q's layout, with v's last dimension.

    Raises:
        ShapeError: q, k, v do not fit together, or the mask does not broadcast to the scores.
        DTypeError: Non-float inputs, or a mask that is neither bool nor q's float dtype.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> q, k, v = (g.input(n, (None, 1, 2, 2)) for n in "qkv")
        >>> ones, rows = np.ones((1, 1, 2, 2), np.float32), np.array([[[[1.0, 0.0], [0.0, 1.0]]]], np.float32)
        >>> dg.attention(q, k, v, causal=True).eval(q=ones, k=ones, v=rows)
        array([[[[1. , 0. ],
                 [0.5, 0.5]]]], dtype=float32)
    """
    if q.ndim != 4:
        raise ShapeError(f"attention: q {q.describe()} must be 4-D ({layout})")
    scale = 1.0 / math.sqrt(q.shape[3]) if scale is None else float(scale)
    kind = None
    inputs = [q, k, v]
    if mask is not None:
        mask = mask if isinstance(mask, Node) else q.graph.constant(np.asarray(mask))
        kind = "bool" if mask.dtype == BOOL else "float" if mask.dtype in FLOAT_DTYPES else str(mask.dtype)
        inputs.append(mask)
    return apply(Attention(causal, scale, layout, kind), *inputs)


def attention_packed(qkv: Node, mask: Node | None = None, causal: bool = False, scale: float | None = None) -> Node:
    """Self-attention whose q, k and v come from one projection, `qkv` (batch, time, 3, heads,
    dim) (`x @ [w_q | w_k | w_v]` reshaped): the kernels read the three parts in place and the
    gradient is one (batch, time, 3, heads, dim) node, so the layer's backward pass is one GEMM.
    Returns (batch, time, heads, dim); otherwise as `attention`."""
    scale = 1.0 / math.sqrt(qkv.shape[-1]) if scale is None else float(scale)
    kind = None if mask is None else "bool" if mask.dtype == BOOL else "float"
    return apply(Attention(causal, scale, PACKED, kind), qkv, *([] if mask is None else [mask]))
