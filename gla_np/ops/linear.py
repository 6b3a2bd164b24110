"""The affine map y = x W + b, applied to the last axis of x.

Every projection in GLA is one of these: q, k, v, the two gate factors, the output gate, the
output projection and the feed-forward block. x may carry any leading batch shape, including
none: ``(D_in,)``, ``(T, D_in)``, ``(B, T, D_in)`` all work, and the weight gradient sums the
per-row outer products over every leading axis.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from gla_np._checks import check_array, check_same_dtype, check_shape


class LinearCache(NamedTuple):
    """Stores the forward's inputs; backward needs x for dW and W for dx (nothing recomputed)."""

    x: np.ndarray  # (..., D_in)
    W: np.ndarray  # (D_in, D_out)
    has_bias: bool  # whether b was given (backward then returns db, else None)


def forward(x, W, b=None):
    """y = x @ W + b over the last axis of x.

    x: (..., D_in), any number of leading axes (also none).  W: (D_in, D_out).
    b: (D_out,) or None.  Returns y: (..., D_out), dtype of the inputs (all must share it).
    """
    x = check_array("x", x, min_ndim=1)
    W = check_array("W", W, ndim=2)
    check_shape("W", W, (x.shape[-1], None))
    if b is not None:
        b = check_array("b", b, ndim=1)
        check_shape("b", b, (W.shape[1],))
    check_same_dtype(x=x, W=W, b=b)

    # One (rows, D_in) @ (D_in, D_out) product: a 3-d x @ W would run one small product per
    # leading index, several times slower for the (B, T, D) activations here.
    y = (x.reshape(-1, x.shape[-1]) @ W).reshape(*x.shape[:-1], W.shape[1])  # (..., D_out)
    if b is not None:
        y += b  # y is new: add the bias in place
    return y, LinearCache(x, W, b is not None)


def backward(dy, cache):
    """Gradients of y = x @ W + b. Derivation: docs/derivations/ops/linear.md

        dx = dy @ W^T                              (..., D_in)
        dW = sum over rows n of outer(x_n, dy_n)   (D_in, D_out)
        db = sum over rows n of dy_n               (D_out,), None when forward had no bias

    ``dy`` (..., D_out); None means zero. Returns (dx, dW, db).
    """
    x, W, has_bias = cache
    D_in, D_out = W.shape
    if dy is None:
        db = np.zeros(D_out, dtype=W.dtype) if has_bias else None
        return np.zeros_like(x), np.zeros_like(W), db
    dy = check_array("dy", dy, min_ndim=1)
    check_shape("dy", dy, x.shape[:-1] + (D_out,))
    check_same_dtype(dy=dy, x=x)

    # Flatten the leading axes into one row axis n; a sum over n is a sum over all of them.
    x_rows = x.reshape(-1, D_in)  # (N, D_in)
    dy_rows = dy.reshape(-1, D_out)  # (N, D_out)

    # forward: y_n = x_n W + b   so: dx_n = dy_n W^T
    dx = (dy_rows @ W.T).reshape(x.shape)  # (..., D_in)
    # forward: y_n[j] = sum_i x_n[i] W[i, j] + b[j], W shared by every row n
    # so:      dW[i, j] = sum_n x_n[i] dy_n[j]
    dW = x_rows.T @ dy_rows  # (D_in, D_out)
    # forward: b is added to every row n   so: db = sum_n dy_n
    # (einsum's sum over rows: the same sum as dy_rows.sum(axis=0), bitwise, in a faster loop)
    db = np.einsum("nd->d", dy_rows) if has_bias else None
    return dx, dW, db
