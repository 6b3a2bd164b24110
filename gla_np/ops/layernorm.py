"""Layer normalization over the last axis: y = (x - mean) / sqrt(var + eps) * w + b.

The GLA paper normalizes each head's output with LayerNorm, and Edifice's blocks use it before
attention and the feed-forward part. Statistics are per row (every leading index), over the last
axis of size D; w and b are shared by all rows. The variance is the biased one (divide by D) and
is computed from centred values (two passes), which stays accurate when |mean| >> std.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from gla_np._checks import (check_array, check_like, check_positive_real, check_same_dtype,
                            check_shape)


class LayerNormCache(NamedTuple):
    """Stores the normalized input and the per-row 1/std; backward recomputes no statistics.

    x_hat and rstd are all that the compact dx formula needs (it never uses x or the mean).
    """

    x_hat: np.ndarray  # (..., D): (x - mean) * rstd
    rstd: np.ndarray  # (..., 1): 1 / sqrt(var + eps), kept with a size-1 axis to broadcast
    w: np.ndarray  # (D,)


def forward(x, w, b, eps=1e-5):
    """y = (x - mean(x)) / sqrt(var(x) + eps) * w + b, statistics over the last axis.

    x: (..., D), any number of leading axes (also none).  w, b: (D,).  eps > 0.
    Returns y: (..., D) in the inputs' dtype (all must share it).
    """
    x = check_array("x", x, min_ndim=1)
    D = x.shape[-1]
    w = check_array("w", w, ndim=1)
    check_shape("w", w, (D,))
    b = check_array("b", b, ndim=1)
    check_shape("b", b, (D,))
    check_same_dtype(x=x, w=w, b=b)
    eps = check_positive_real("eps", eps)

    mean = x.mean(axis=-1, keepdims=True)  # (..., 1)
    xc = x - mean  # (..., D)
    var = (xc * xc).mean(axis=-1, keepdims=True)  # (..., 1)
    rstd = 1.0 / np.sqrt(var + eps)  # (..., 1)
    x_hat = xc * rstd  # (..., D)
    y = x_hat * w + b
    return y, LayerNormCache(x_hat, rstd, w)


def backward(dy, cache):
    """Gradients of LayerNorm. Derivation: docs/derivations/ops/layernorm.md

        dx_hat = dy * w                                                      (..., D)
        dx = rstd * (dx_hat - mean(dx_hat) - x_hat * mean(dx_hat * x_hat))   means over last axis
        dw = sum over leading axes of dy * x_hat                  (D,)
        db = sum over leading axes of dy                          (D,)

    ``dy`` (..., D); None means zero. Returns (dx, dw, db).
    """
    x_hat, rstd, w = cache
    if dy is None:
        return np.zeros_like(x_hat), np.zeros_like(w), np.zeros_like(w)
    dy = check_like("dy", dy, x=x_hat)
    leading = tuple(range(dy.ndim - 1))  # every axis but the last

    # forward: y = x_hat * w + b, w and b shared by every row
    # so:      dw = sum_rows dy * x_hat,   db = sum_rows dy,   dx_hat = dL/dx_hat = dy * w
    dw = (dy * x_hat).sum(axis=leading)  # (D,)
    db = dy.sum(axis=leading)  # (D,)
    dx_hat = dy * w  # (..., D), dL/dx_hat

    # forward: x_hat = (x - mean(x)) * rstd,  rstd = (var(x) + eps)^(-1/2)
    # so:      dx = rstd * (dx_hat - mean(dx_hat) - x_hat * mean(dx_hat * x_hat))
    #          (docs: the three paths)
    dx_hat_mean = dx_hat.mean(axis=-1, keepdims=True)  # (..., 1)
    dx_hat_x_hat_mean = (dx_hat * x_hat).mean(axis=-1, keepdims=True)  # (..., 1)
    dx = rstd * (dx_hat - dx_hat_mean - x_hat * dx_hat_x_hat_mean)  # (..., D)
    return dx, dw, db
