"""Swish, also called SiLU: swish(x) = x * sigma(x), elementwise.

GLA uses it on the output gate (o = RMSNorm(core) * swish(x W_r)) and inside the SwiGLU
feed-forward block. Adds over ``sigmoid``: a product rule. The sigmoid itself is the stable one
from ``gla_np.sigmoid``, so swish is finite for every finite x: swish(+1000) = 1000 and
swish(-1000) = -0.0, with slopes 1 and 0.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from gla_np._checks import check_array, check_like
from gla_np.ops.sigmoid import stable_sigmoid


class SwishCache(NamedTuple):
    """Stores the output and the sigmoid; backward recomputes nothing expensive (and needs no x:
    its slope is written with y = x s)."""

    y: np.ndarray  # any shape: the output x * sigma(x)
    s: np.ndarray  # same shape as y: sigma(x)


def forward(x):
    """y = x * sigma(x), elementwise. x: any shape, float32 or float64; y keeps its shape, dtype."""
    x = check_array("x", x)
    s = stable_sigmoid(x)
    with np.errstate(under="ignore"):  # x * s may round to a subnormal or 0: that is right
        y = x * s
    return y, SwishCache(y, s)


def backward(dy, cache):
    """Gradient of swish, elementwise. Derivation: docs/derivations/ops/swish.md

        dx = dy * (s + y * (1 - s))          s = sigma(x),  y = x * s

    ``dy`` None means zero. Returns dx alone (the forward has one array input).
    """
    y, s = cache
    if dy is None:
        return np.zeros_like(y)
    dy = check_like("dy", dy, x=y)

    # forward: y = x * s,  s = sigma(x),  ds/dx = s * (1 - s)
    # so:      dy/dx = s + x * s * (1 - s) = s + y * (1 - s)
    one = y.dtype.type(1)  # a typed 1 keeps a 0-d float32 float32 under NumPy 1.x too
    with np.errstate(under="ignore"):
        dx = one - s  # then in place, term by term: one array instead of four
        dx *= y  # y (1 - s)
        dx += s  # s + y (1 - s)
        dx *= dy
    return dx
