"""A short causal depthwise convolution along time (fla's ``ShortConvolution``), optional in GLA.

Each channel c has its own kernel of W taps (W = 4 in fla); position t mixes itself with the
W - 1 positions before it and never with later ones:

    xp = concat(prefix, x) along time,  prefix (B, W-1, C)         (1)
    y[b, t, c] = sum_{j=0}^{W-1} w[j, c] * xp[b, t + j, c]        (2)

``prefix`` is zeros at the start of a sequence, or the last W - 1 inputs of the previous piece
when streaming: that buffer is the convolution's whole state. w[W-1] weighs the current position.
No bias (fla's default). The layer applies SiLU after the convolution, as fla's
``ShortConvolution(..., activation='silu')`` does; that is a separate op (``gla_np.swish``).
fla stores the kernel as (C, 1, W) for torch's conv1d; we store it as (W, C).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from gla_np._checks import check_array, check_same_dtype, check_shape
from gla_np.layers._params import check_upstream


class ShortConvCache(NamedTuple):
    """The padded input (for dw) and the kernel (for dx); nothing is recomputed."""

    xp: np.ndarray  # (B, W - 1 + T, C): prefix then x
    w: np.ndarray  # (W, C)
    has_prefix: bool  # False: the prefix was zeros and backward returns d_prefix = None


def forward(x, w, prefix=None):
    """Causal depthwise convolution (2). x (B, T, C), w (W, C), prefix (B, W-1, C) or None.

    Returns ``(y, cache)``, y (B, T, C) in x's dtype. The next piece's prefix is
    ``new_prefix(cache)``.
    """
    x = check_array("x", x, ndim=3)
    w = check_array("w", w, ndim=2)
    B, T, C = x.shape
    W = w.shape[0]
    check_shape("w", w, (W, C))
    if prefix is None:
        prefix_arr = np.zeros((B, W - 1, C), dtype=x.dtype)
    else:
        prefix_arr = check_shape("prefix", check_array("prefix", prefix, ndim=3), (B, W - 1, C))
    check_same_dtype(x=x, w=w, prefix=prefix_arr)

    xp = np.concatenate([prefix_arr, x], axis=1)  # (B, W-1+T, C)
    y = np.zeros_like(x)
    for j in range(W):  # W is tiny, 4 in fla: one shifted, weighted copy per tap
        y += w[j] * xp[:, j:j + T]  # in place: y is this function's own array
    return y, ShortConvCache(xp, w, prefix is not None)


def new_prefix(cache):
    """The last W - 1 inputs seen, (B, W-1, C): the prefix for the next piece of the stream."""
    W = cache.w.shape[0]
    return cache.xp[:, cache.xp.shape[1] - (W - 1):].copy()


def backward(dy, cache):
    """Return ``(dx, dw, d_prefix)``. Derivation: docs/derivations/layers/short-conv.md

        dxp[:, t + j] += w[j] * dy[:, t]                 for every tap j
        dw[j]          = sum_{b, t} xp[:, t + j] * dy[:, t]
        dx = dxp[:, W-1:],   d_prefix = dxp[:, :W-1] (None when forward had no prefix)

    ``dy`` None means zero; otherwise it must have y's shape and dtype.
    """
    xp, w, has_prefix = cache
    W, C = w.shape
    B, P, _ = xp.shape
    T = P - (W - 1)
    dy = check_upstream("dy", dy, (B, T, C), xp.dtype)  # None means zero; x's shape and dtype
    dxp = np.zeros_like(xp)  # (B, W-1+T, C)
    dw = np.empty_like(w)
    for j in range(W):
        # forward (2): y[:, t] += w[j] * xp[:, t + j]
        # so: dxp[:, t + j] += w[j] * dy[:, t],  dw[j] = sum over b, t of xp[:, t + j] * dy[:, t]
        dxp[:, j:j + T] += w[j] * dy
        dw[j] = np.einsum("btc,btc->c", xp[:, j:j + T], dy)  # no (B, T, C) product array
    d_prefix = dxp[:, :W - 1] if has_prefix else None
    return dxp[:, W - 1:], dw, d_prefix
