"""The logistic sigmoid, sigma(x) = 1 / (1 + exp(-x)), elementwise.

GLA uses it twice, hidden inside other ops: swish (the output gate and SwiGLU) and logsigmoid
(the log forget gate). Both import ``stable_sigmoid`` from here rather than writing their own.

Numerics. The textbook 1 / (1 + exp(-x)) overflows in exp(-x) for x below about -88 (float32)
or -709 (float64). We only ever evaluate exp(-|x|), which lies in (0, 1]:

    x >= 0:  sigma(x) = 1 / (1 + e)        with e = exp(-|x|)
    x <  0:  sigma(x) = e / (1 + e)

For |x| large, e underflows to 0 and the result is exactly 1 or 0: the correctly rounded answer.
Underflow is the right outcome there, so it is the one floating-point flag we silence (with
``np.errstate(under="ignore")``), so that even ``np.seterr(all="raise")`` stays quiet.

dtype. The constant 1 is written in x's own dtype (``one = x.dtype.type(1)``), not as the Python
float ``1.0``. NumPy 2 adapts a Python float to the array, but NumPy 1.x promotes a 0-d float32
array (or NumPy scalar) combined with a Python float to float64. With a typed constant the
result keeps x's dtype under both rules, for every shape including ``()``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from gla_np._checks import check_array, check_like


def stable_sigmoid(x):
    """sigma(x) for an ndarray, without overflow; no checks, no cache. Keeps ``x``'s dtype."""
    one = x.dtype.type(1)  # 1 in x's dtype (see the module docstring: NumPy 1.x and 0-d inputs)
    x_flat = x.reshape(-1)  # 1-d (a 0-d x too), so that every step below can work in place
    with np.errstate(under="ignore"):
        e = np.abs(x_flat)
        np.negative(e, out=e)
        np.exp(e, out=e)  # e = exp(-|x|), in (0, 1]: never overflows
        y = one + e  # the denominator, in (1, 2]
        # the numerator, 1 where x >= 0 and e where x < 0, as max(e, [x >= 0]) since 0 < e <= 1
        # (exact, and unlike np.where or a masked copy a fast vectorised loop)
        np.maximum(e, x_flat >= 0, out=e)
        np.divide(e, y, out=y)  # x >= 0: 1 / (1 + e);  x < 0: e / (1 + e)
    return y.reshape(x.shape)


class SigmoidCache(NamedTuple):
    """Stores the output only: sigma' = sigma * (1 - sigma) needs nothing else."""

    y: np.ndarray  # same shape as x: sigma(x)


def forward(x):
    """y = sigma(x), elementwise. x: any shape, float32 or float64; y has x's shape and dtype."""
    x = check_array("x", x)
    y = stable_sigmoid(x)
    return y, SigmoidCache(y)


def backward(dy, cache):
    """Gradient of sigma, elementwise. Derivation: docs/derivations/ops/sigmoid.md

        dx = dy * y * (1 - y)          y = sigma(x), taken from the cache

    ``dy`` None means zero. Returns dx alone (the forward has one array input).
    """
    y = cache.y
    if dy is None:
        return np.zeros_like(y)
    dy = check_like("dy", dy, y=y)

    # forward: y = 1 / (1 + exp(-x))   so: dy/dx = exp(-x) / (1 + exp(-x))^2 = y * (1 - y)
    one = y.dtype.type(1)  # a typed 1 keeps a 0-d float32 float32 under NumPy 1.x too
    with np.errstate(under="ignore"):
        dx = dy * y * (one - y)
    return dx
