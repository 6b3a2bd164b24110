"""The log of the sigmoid, logsigmoid(x) = log sigma(x) = -softplus(-x), elementwise.

GLA's forget gate lives in log space: g = logsigmoid(z) / tau is always <= 0, so the decay
alpha = exp(g) is in (0, 1] and cumulative decays are sums of g, never products of alpha.

Numerics. Both naive forms break: log(sigma(x)) gives log(0) = -inf once sigma(x) underflows
(x below about -103 in float32), and -log(1 + exp(-x)) overflows in exp(-x). Splitting off the
part that grows linearly leaves a correction that only ever sees exp(-|x|) in (0, 1]:

    logsigmoid(x) = min(x, 0) - log1p(exp(-|x|))

(for x >= 0 this is -log(1 + e^-x); for x < 0 it is x - log(1 + e^x), the same number).
Its slope is sigma(-x) = 1 - sigma(x), computed by the stable sigmoid from ``gla_np.sigmoid``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from gla_np._checks import check_array, check_like
from gla_np.ops.sigmoid import stable_sigmoid


class LogsigmoidCache(NamedTuple):
    """Stores the slope sigma(-x), the only thing backward needs (computed once in forward)."""

    s_neg: np.ndarray  # same shape as x: sigma(-x) = d logsigmoid(x) / dx


def forward(x):
    """y = log sigma(x), elementwise; y <= 0. x: any shape, float32 or float64."""
    x = check_array("x", x)
    zero = x.dtype.type(0)  # a typed 0 keeps a 0-d float32 float32 under NumPy 1.x too
    with np.errstate(under="ignore"):  # exp(-|x|) underflows to 0 for large |x|: correct
        y = np.minimum(x, zero) - np.log1p(np.exp(-np.abs(x)))
    s_neg = stable_sigmoid(-x)
    return y, LogsigmoidCache(s_neg)


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
