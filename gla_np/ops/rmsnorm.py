"""RMS normalization over the last axis: y = x / sqrt(mean(x^2) + eps) * w.

LayerNorm without the centring and without the bias (Zhang and Sennrich, 2019). The GLA layer
uses it per head on the attention output, as fla does, and the blocks use it as their norm.

Per head, one weight shared by all heads. With x of shape ``(..., H, V)`` and w of shape
``(V,)`` this very function normalizes each head's V values separately (the statistics are over
the last axis only) and scales every head by the same w. Nothing special is needed for heads:
they are one more leading axis. Consequently ``dw`` sums over every leading axis, heads
included, because the one w was used by every (batch, time, head) row. tests/test_rmsnorm.py
checks this with H = 3.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from gla_np._checks import (check_array, check_like, check_positive_real, check_same_dtype,
                            check_shape)


class RMSNormCache(NamedTuple):
    """Stores the normalized input and the per-row 1/rms; backward recomputes no statistics."""

    x_hat: np.ndarray  # (..., D): x * rstd
    rstd: np.ndarray  # (..., 1): 1 / sqrt(mean(x^2) + eps), kept with a size-1 axis to broadcast
    w: np.ndarray  # (D,)


def forward(x, w, eps=1e-6):
    """y = x / sqrt(mean(x^2) + eps) * w, the mean over the last axis.

    x: (..., D), any number of leading axes (also none; heads are just one of them).
    w: (D,), shared by all leading indices.  eps > 0.  Returns y: (..., D) in x's dtype.
    """
    x = check_array("x", x, min_ndim=1)
    w = check_array("w", w, ndim=1)
    check_shape("w", w, (x.shape[-1],))
    check_same_dtype(x=x, w=w)
    eps = check_positive_real("eps", eps)

    D = x.dtype.type(x.shape[-1])
    mean_sq = np.einsum("...d,...d->...", x, x)[..., None] / D  # (..., 1), mean(x^2), no x*x
    rstd = 1.0 / np.sqrt(mean_sq + eps)  # (..., 1)
    x_hat = x * rstd  # (..., D)
    y = x_hat * w
    return y, RMSNormCache(x_hat, rstd, w)


def backward(dy, cache):
    """Gradients of RMSNorm. Derivation: docs/derivations/ops/rmsnorm.md

        dx_hat = dy * w                                       (..., D)
        dx = rstd * (dx_hat - x_hat * mean(dx_hat * x_hat))   mean over the last axis
        dw = sum over ALL leading axes of dy * x_hat     (D,)  (heads included)

    ``dy`` (..., D); None means zero. Returns (dx, dw).
    """
    x_hat, rstd, w = cache
    if dy is None:
        return np.zeros_like(x_hat), np.zeros_like(w)
    dy = check_like("dy", dy, x=x_hat)

    # forward: y = x_hat * w, one w for every row
    # so:      dw = sum_rows dy * x_hat,   dx_hat = dL/dx_hat = dy * w
    rows = (-1, w.size)  # the leading axes as one row axis
    dw = np.einsum("nd,nd->d", dy.reshape(rows), x_hat.reshape(rows))  # (D,), no dy * x_hat array
    dx_hat = dy * w  # (..., D), dL/dx_hat

    # forward: x_hat = x * rstd,  rstd = (mean(x^2) + eps)^(-1/2)
    # so:      dx = rstd * (dx_hat - x_hat * mean(dx_hat * x_hat))   (docs: the two paths)
    D = dx_hat.dtype.type(w.size)  # the mean's divisor in the data's dtype
    dx_hat_x_hat_mean = np.einsum("...d,...d->...", dx_hat, x_hat)[..., None] / D  # (..., 1)
    dx = x_hat * dx_hat_x_hat_mean  # (..., D), then in place: dx_hat - that, times rstd
    np.subtract(dx_hat, dx, out=dx)
    dx *= rstd
    return dx, dw
