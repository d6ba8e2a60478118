"""Parameter initializers: how `Graph.parameter(..., init=...)` fills a new parameter.

An initializer is a callable `(shape, dtype, rng) -> array`; the named ones can also be given as
strings (`init="he_normal"`). Fans follow drug's layouts: a matrix is (in, out) (Dense), a
convolution kernel is OIHW (out, in, kh, kw), so fan-in is `in * kh * kw` as in PyTorch.

    g.parameter("w", (784, 256), init=dg.initializers.he_normal())
    g.parameter("b", (256,), init=dg.initializers.uniform(-0.1, 0.1))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .types import Shape

Initializer = Callable[[Shape, np.dtype, np.random.Generator], np.ndarray]
TRUNCATED_STD = 0.87962566103423978  # std of a unit normal truncated to [-2, 2] (JAX's variance_scaling)


def fans(shape: Shape) -> tuple[int, int]:
    """Fan-in and fan-out: (in, out) matrices, OIHW convolution kernels; vectors count their size."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def _leaky_gain(negative_slope: float) -> float:
    """PyTorch's calculate_gain('leaky_relu', a): sqrt(2 / (1 + a^2)); a = 0 is relu's sqrt(2)."""
    return math.sqrt(2.0 / (1.0 + negative_slope**2))


def _truncated_unit(rng: np.random.Generator, shape: Shape, low: float, high: float) -> np.ndarray:
    """Unit normal samples conditioned on [low, high], by redrawing the ones outside."""
    out = rng.standard_normal(size=shape)
    outside = (out < low) | (out > high)
    while outside.any():
        out[outside] = rng.standard_normal(size=int(outside.sum()))
        outside = (out < low) | (out > high)
    return out


@dataclass(frozen=True)
class uniform:  # noqa: N801 - named like the function users call
    """Uniform on [a, b)."""

    a: float = 0.0
    b: float = 1.0

    def __call__(self, shape, dtype, rng):
        return rng.uniform(self.a, self.b, size=shape).astype(dtype)


@dataclass(frozen=True)
class normal:  # noqa: N801
    """Normal with mean `mean` and standard deviation `std`."""

    std: float = 1.0
    mean: float = 0.0

    def __call__(self, shape, dtype, rng):
        return (self.mean + self.std * rng.standard_normal(size=shape)).astype(dtype)


@dataclass(frozen=True)
class truncated_normal:  # noqa: N801
    """PyTorch's trunc_normal_: normal(mean, std) conditioned on [a, b] (absolute bounds)."""

    std: float = 1.0
    mean: float = 0.0
    a: float = -2.0
    b: float = 2.0

    def __call__(self, shape, dtype, rng):
        if not self.a < self.b or self.std <= 0:
            raise ValueError(f"truncated_normal needs a < b and std > 0, got a={self.a}, b={self.b}, std={self.std}")
        unit = _truncated_unit(rng, shape, (self.a - self.mean) / self.std, (self.b - self.mean) / self.std)
        return (self.mean + self.std * unit).astype(dtype)


@dataclass(frozen=True)
class xavier_uniform:  # noqa: N801
    """Glorot uniform: U(-l, l) with l = gain * sqrt(6 / (fan_in + fan_out)) (drug's default)."""

    gain: float = 1.0

    def __call__(self, shape, dtype, rng):
        limit = self.gain * math.sqrt(6.0 / max(sum(fans(shape)), 1))
        return rng.uniform(-limit, limit, size=shape).astype(dtype)


@dataclass(frozen=True)
class xavier_normal(xavier_uniform):  # noqa: N801
    """Glorot normal: N(0, gain^2 * 2 / (fan_in + fan_out))."""

    def __call__(self, shape, dtype, rng):
        std = self.gain * math.sqrt(2.0 / max(sum(fans(shape)), 1))
        return (rng.standard_normal(size=shape) * std).astype(dtype)


@dataclass(frozen=True)
class he_normal:  # noqa: N801
    """PyTorch's kaiming_normal_ (fan_in mode): N(0, gain^2 / fan_in), gain sqrt(2 / (1 + a^2))."""

    negative_slope: float = 0.0

    def __call__(self, shape, dtype, rng):
        std = _leaky_gain(self.negative_slope) / math.sqrt(max(fans(shape)[0], 1))
        return (rng.standard_normal(size=shape) * std).astype(dtype)


@dataclass(frozen=True)
class he_uniform:  # noqa: N801
    """PyTorch's kaiming_uniform_ (fan_in mode): U(-l, l), l = gain * sqrt(3 / fan_in). With
    negative_slope=sqrt(5) it is PyTorch's default for Linear and Conv weights, U(±1/sqrt(fan_in))."""

    negative_slope: float = 0.0

    def __call__(self, shape, dtype, rng):
        limit = _leaky_gain(self.negative_slope) * math.sqrt(3.0 / max(fans(shape)[0], 1))
        return rng.uniform(-limit, limit, size=shape).astype(dtype)


@dataclass(frozen=True)
class lecun_normal:  # noqa: N801
    """JAX's lecun_normal: a normal truncated to two standard deviations, scaled to variance 1 / fan_in."""

    def __call__(self, shape, dtype, rng):
        std = math.sqrt(1.0 / max(fans(shape)[0], 1)) / TRUNCATED_STD
        return (_truncated_unit(rng, shape, -2.0, 2.0) * std).astype(dtype)


@dataclass(frozen=True)
class orthogonal:  # noqa: N801
    """PyTorch's orthogonal_: the parameter seen as (shape[0], rest) has orthonormal rows or
    columns (whichever are fewer), times `gain`; from the QR decomposition of a normal matrix."""

    gain: float = 1.0

    def __call__(self, shape, dtype, rng):
        if len(shape) < 2:
            raise ValueError(f"orthogonal needs a parameter of at least 2 dimensions, got shape {shape}")
        rows, cols = shape[0], math.prod(shape[1:])
        flat = rng.standard_normal(size=(rows, cols))
        q, r = np.linalg.qr(flat.T if rows < cols else flat)
        q = q * np.sign(np.diag(r))  # a unique Q: R with a positive diagonal
        q = q.T if rows < cols else q
        return (self.gain * q).reshape(shape).astype(dtype)


@dataclass(frozen=True)
class constant:  # noqa: N801
    value: float = 0.0

    def __call__(self, shape, dtype, rng):
        return np.full(shape, self.value, dtype)


NAMED: dict[str, Initializer] = {
    "xavier": xavier_uniform(),
    "glorot": xavier_uniform(),
    "xavier_uniform": xavier_uniform(),
    "normal": xavier_normal(),  # drug's historical "normal": Glorot normal
    "xavier_normal": xavier_normal(),
    "he_normal": he_normal(),
    "he_uniform": he_uniform(),
    "lecun_normal": lecun_normal(),
    "orthogonal": orthogonal(),
    "truncated_normal": truncated_normal(),
    "zeros": constant(0.0),
    "ones": constant(1.0),
}


def torch_default(fan_in: int) -> tuple[Initializer, Initializer]:
    """What PyTorch's Linear and Conv layers use: kaiming_uniform_(a=sqrt(5)) for the weight, i.e.
    U(±1/sqrt(fan_in)), and U(±1/sqrt(fan_in)) for the bias."""
    bound = 1.0 / math.sqrt(max(fan_in, 1))
    return he_uniform(math.sqrt(5.0)), uniform(-bound, bound)
