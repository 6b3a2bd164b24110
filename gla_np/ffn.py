"""The gated feed-forward part of a block (SwiGLU), with its own pre-norm, dropout and residual.

    zn = Norm(z)                                       (1)
    a = swish(zn W_gate),  b = zn W_up     (D, F)      (2) F = hidden_size * expand_factor
    out = z + dropout((a * b) W_down)      (F, D)      (3)

One branch decides how much of the other passes (a gated linear unit with a swish gate). No
biases, as in fla's ``GLAMLP``. Edifice's gated FFN has the same three matrices (with biases) and
the same inner size ``hidden_size * expand_factor``. fla sizes the inner width differently (about
8/3 D rounded up), so at the same ``expand_factor`` our FFN follows Edifice, not fla.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from gla_np import dropout, linear, swish
from gla_np._params import check_input, norm_backward, norm_forward, norm_init, normal, put, take


def init_params(config, rng):
    """Norm weight 1 (bias 0 for LayerNorm); the three matrices N(0, 0.02)."""
    D = config.hidden_size
    F = D * config.expand_factor
    dt = np.dtype(config.dtype)
    params = put(norm_init(config.norm, D, dt), "norm.")
    params.update({"W_gate": normal(rng, (D, F), dt), "W_up": normal(rng, (D, F), dt),
                   "W_down": normal(rng, (F, D), dt)})
    return params


class FFNCache(NamedTuple):
    """Children by name plus the two branch values the product rule needs."""

    norm: Any  # NormCache of (1)
    gate_proj: Any  # LinearCache of zn W_gate
    gate_act: Any  # SwishCache
    up_proj: Any  # LinearCache of zn W_up
    a: np.ndarray  # (B, T, F): swish(zn W_gate)
    b: np.ndarray  # (B, T, F): zn W_up
    down_proj: Any  # LinearCache of (a * b) W_down
    drop: Any  # DropoutCache


def forward(params, z, config, *, training=False, rng=None):
    """z (B, T, D) -> z + dropout(SwiGLU(Norm(z))), (B, T, D). Returns ``(y, cache)``."""
    z = check_input("z", z, config.hidden_size, config.dtype)
    zn, c_norm = norm_forward(take(params, "norm."), z, config.norm, config.norm_eps)
    h, c_gate = linear.forward(zn, params["W_gate"])  # (B, T, F)
    a, c_act = swish.forward(h)
    b, c_up = linear.forward(zn, params["W_up"])  # (B, T, F)
    y, c_down = linear.forward(a * b, params["W_down"])  # (B, T, D)
    yd, c_drop = dropout.forward(y, config.dropout, rng, training)
    return z + yd, FFNCache(c_norm, c_gate, c_act, c_up, a, b, c_down, c_drop)


def backward(dy, cache):
    """Return ``(dz, grads)``, grads keyed like params. Derivation: docs/derivations/ffn.md

        dm = dropout'(dy) W_down^T                 m = a * b
        da = dm * b,   db = dm * a,   dh = swish'(h) da
        dzn = dh W_gate^T + db W_up^T
        dz = dy + Norm'(dzn)
    """
    c = cache
    dm, dW_down, _ = linear.backward(dropout.backward(dy, c.drop), c.down_proj)
    # forward: m = a * b   so: da = dm * b,  db = dm * a
    da, db = dm * c.b, dm * c.a
    dzn_up, dW_up, _ = linear.backward(db, c.up_proj)
    dzn_gate, dW_gate, _ = linear.backward(swish.backward(da, c.gate_act), c.gate_proj)
    dzn = dzn_gate + dzn_up  # zn fed two projections
    dz_norm, n_grads = norm_backward(dzn, c.norm)
    dz = dy + dz_norm  # z fed the residual and the norm
    grads = {"W_gate": dW_gate, "W_up": dW_up, "W_down": dW_down}
    grads.update(put(n_grads, "norm."))
    return dz, grads
