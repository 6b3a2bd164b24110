"""The forget gate: from the layer's input to the log gates g <= 0 that the recurrence decays by.

One option, ``kind``, picks how much the gate depends on the data:

- ``"vector"`` (GLA, the default): one decay per head and key channel, from the token, through a
  low-rank bottleneck (fla's ``gk_proj``):

      z = (x W1) W2 + b2        W1 (D, R), W2 (R, H*K), b2 (H*K,)
      g = logsigmoid(z) / tau   (..., H, K)

  R = 16 and tau = 16 (fla's ``gate_logit_normalizer``). With b2 = 0 and small weights z ~ 0 at
  init, so g ~ -ln(2)/16 and every channel halves its memory about every 16 tokens. Dividing by
  tau keeps the decay slow: each step can forget at most what sigmoid allows, raised to 1/tau.
- ``"scalar"``: one data-dependent decay per head, shared by its K channels (Mamba-2 style). Our
  choice of parametrization: a direct D -> H projection with a bias,
  ``g_h = logsigmoid(x W + b)_h / tau``, broadcast over K. H outputs need no bottleneck. Because
  one number feeds K channels, backward sums dg over K.
- ``"fixed"``: a per-head constant, RetNet's ``g_h = log(1 - 2^(-5-h))``, the same at every
  position and channel; not learned, no parameters.
- ``"none"``: g = 0, no decay at all: plain (unnormalized) linear attention.

The output is token-major ``(..., H, K)``, like the projections; the layer moves heads ahead of
time for the core. x may be ``(B, T, D)`` or, for streaming, ``(B, D)``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from gla_np._checks import check_array, check_choice
from gla_np.layers._params import check_upstream, normal
from gla_np.ops import linear, logsigmoid

GATES = ("vector", "scalar", "fixed", "none")


def fixed_log_decays(num_heads, dtype=np.float64):
    """RetNet's per-head log decays ``log(1 - 2^(-5-h))`` for h = 0..H-1, shape (H,)."""
    h = np.arange(num_heads)
    return np.log1p(-(2.0 ** (-5.0 - h))).astype(dtype)


def param_shapes(kind, D, H, K, rank):
    """The gate's parameter shapes by name (empty for "fixed" and "none")."""
    if kind == "vector":
        return {"W1": (D, rank), "W2": (rank, H * K), "b2": (H * K,)}
    if kind == "scalar":
        return {"W": (D, H), "b": (H,)}
    return {}


def init_params(kind, D, H, K, rank, dtype, rng):
    """Gate parameters as fla initializes them: weights N(0, 0.02), bias 0. Empty for fixed/none."""
    if kind == "vector":
        return {"W1": normal(rng, (D, rank), dtype), "W2": normal(rng, (rank, H * K), dtype),
                "b2": np.zeros(H * K, dtype=dtype)}
    if kind == "scalar":
        return {"W": normal(rng, (D, H), dtype), "b": np.zeros(H, dtype=dtype)}
    return {}


class GateCache(NamedTuple):
    """Children by name (None where the kind has no such step); nothing is recomputed."""

    kind: str  # which gate ran: "vector", "scalar", "fixed" or "none"
    x_shape: tuple  # (..., D): dx is zero of this shape for "fixed" and "none"
    x_dtype: np.dtype  # x.dtype: the dtype of dx and of a zero dg
    down: Any  # LinearCache of x W1 ("vector"), else None
    up: Any  # LinearCache of (x W1) W2 + b2 ("vector") or of x W + b ("scalar")
    act: Any  # LogsigmoidCache of z
    normalizer: float  # tau
    H: int  # heads
    K: int  # key channels per head (the "scalar" gate is broadcast over them)


def forward(params, x, *, kind, num_heads, head_dim, normalizer):
    """Log forget gates g <= 0 of shape ``x.shape[:-1] + (H, K)``; returns ``(g, cache)``.

    params: as ``init_params`` makes them for ``kind``. x: ``(..., D)``. normalizer: tau > 0.
    """
    check_choice("kind", kind, GATES)
    x = check_array("x", x, min_ndim=1)
    H, K = num_heads, head_dim
    lead = x.shape[:-1]
    down = up = act = None
    if kind == "vector":
        xr, down = linear.forward(x, params["W1"])  # (..., R)
        z, up = linear.forward(xr, params["W2"], params["b2"])  # (..., H*K)
        ls, act = logsigmoid.forward(z)
        ls /= normalizer  # g = logsigmoid(z) / tau, in logsigmoid's new array (not its cache)
        g = ls.reshape(lead + (H, K))
    elif kind == "scalar":
        z, up = linear.forward(x, params["W"], params["b"])  # (..., H)
        ls, act = logsigmoid.forward(z)
        g = np.broadcast_to((ls / normalizer)[..., None], lead + (H, K)).copy()
    elif kind == "fixed":
        g = np.broadcast_to(fixed_log_decays(H, x.dtype)[:, None], lead + (H, K)).copy()
    else:  # "none"
        g = np.zeros(lead + (H, K), dtype=x.dtype)
    return g, GateCache(kind, x.shape, x.dtype, down, up, act, float(normalizer), H, K)


def backward(dg, cache):
    """Return ``(dx, grads)``, grads keyed like the params. Derivation:
    docs/derivations/layers/gate.md

        vector:  dz = sigma(-z) * dg / tau       (dg flattened to (..., H*K))
                 dW2 = (x W1)^T dz,  db2 = sum dz,  dW1 = x^T (dz W2^T),  dx = dz W2^T W1^T
        scalar:  dz = sigma(-z) * (sum_K dg) / tau,  dW = x^T dz,  db = sum dz,  dx = dz W^T
        fixed, none:  dx = 0, no params

    ``dg`` None means zero; otherwise it must have g's shape and dtype.
    """
    c = cache
    lead = c.x_shape[:-1]
    dg = check_upstream("dg", dg, lead + (c.H, c.K), c.x_dtype)  # None means zero
    if c.kind in ("fixed", "none"):
        return np.zeros(c.x_shape, dtype=c.x_dtype), {}
    if c.kind == "vector":
        # forward: g = logsigmoid(z) / tau, reshaped from (..., H*K)   so: dls = dg / tau
        dls = dg.reshape(lead + (-1,)) / c.normalizer  # (..., H*K)
    else:
        # forward: g[..., h, k] = logsigmoid(z)[..., h] / tau for every k   so: sum dg over K
        dls = dg.sum(axis=-1) / c.normalizer  # (..., H)
    dz = logsigmoid.backward(dls, c.act)
    if c.kind == "scalar":
        # forward: z = x W + b
        dx, dW, db = linear.backward(dz, c.up)
        return dx, {"W": dW, "b": db}
    # forward: z = xr W2 + b2,  xr = x W1
    dxr, dW2, db2 = linear.backward(dz, c.up)
    dx, dW1, _ = linear.backward(dxr, c.down)
    return dx, {"W1": dW1, "W2": dW2, "b2": db2}
