"""The log of the sigmoid, logsigmoid(x) = log sigma(x) = -softplus(-x), elementwise.

GLA's forget gate lives in log space: g = logsigmoid(z) / tau is always <= 0, so the decay
alpha = exp(g) is in (0, 1] and cumulative decays are sums of g, never products of alpha.

Numerics. Both naive forms break: log(sigma(x)) gives log(0) = -inf once sigma(x) underflows
(x below about -103 in float32), and -log(1 + exp(-x)) overflows in exp(-x). Splitting off the
part that grows linearly leaves a correction that only ever sees exp(-|x|) in (0, 1]:

    logsigmoid(x) = min(x, 0) - log1p(exp(-|x|))

(for x >= 0 this is -log(1 + e^-x); for x < 0 it is x - log(1 + e^x), the same number).
Its slope is sigma(-x) = 1 - sigma(x), formed as the stable sigmoid of ``gla_np.sigmoid`` forms
it, from the same exp(-|x|): one exponential serves the value and the slope.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from gla_np._checks import check_array, check_like


class LogsigmoidCache(NamedTuple):
    """Stores the slope sigma(-x), the only thing backward needs (computed once in forward)."""

    s_neg: np.ndarray  # same shape as x: sigma(-x) = d logsigmoid(x) / dx


def forward(x):
    """y = log sigma(x), elementwise; y <= 0. x: any shape, float32 or float64."""
    x = check_array("x", x)
    one = x.dtype.type(1)  # typed: a 0-d float32 stays float32 on 1.x
    x_flat = x.reshape(-1)  # 1-d (a 0-d x too), so that the steps below can work in place
    with np.errstate(under="ignore"):  # exp(-|x|) underflows to 0 for large |x|: correct
        e = np.abs(x_flat)
        np.negative(e, out=e)
        np.exp(e, out=e)  # e = exp(-|x|) in (0, 1], the one exponential of value and slope
        # min(x, 0) against an array of zeros: NumPy's minimum with a scalar operand runs a
        # loop about three times slower than with two arrays (the same values, bitwise)
        y = np.zeros_like(x_flat)
        np.minimum(x_flat, y, out=y)
        y -= np.log1p(e)  # min(x, 0) - log1p(exp(-|x|))
        # the slope sigma(-x) from the same e, as stable_sigmoid(-x) forms it (bitwise):
        # 1 / (1 + e) where x <= 0 and e / (1 + e) where x > 0, the numerator as max(e, [x <= 0])
        s_neg = one + e
        np.divide(np.maximum(e, x_flat <= 0, out=e), s_neg, out=s_neg)
    return y.reshape(x.shape), LogsigmoidCache(s_neg.reshape(x.shape))


def backward(dy, cache):
    """Gradient of logsigmoid, elementwise. Derivation: docs/derivations/ops/logsigmoid.md

        dx = dy * sigma(-x)

    ``dy`` None means zero. Returns dx alone (the forward has one array input).
    """
    s_neg = cache.s_neg
    if dy is None:
        return np.zeros_like(s_neg)
    dy = check_like("dy", dy, x=s_neg)

    # forward: y = -log(1 + exp(-x))   so: dy/dx = exp(-x) / (1 + exp(-x)) = sigma(-x)
    with np.errstate(under="ignore"):
        dx = dy * s_neg
    return dx
