"""The gated feed-forward part of a block (SwiGLU), with its own pre-norm, dropout and residual.

    zn = Norm(z)                                           (1)
    sh = swish(zn W_gate),  u = zn W_up        (D, F)      (2), (3) F = hidden_size * expand_factor
    out = z + dropout((sh * u) W_down)         (F, D)      (4)-(6)

(The numbers are those of docs/derivations/layers/ffn.md, which writes each step on its own line.)

One branch (the gate, ``sh``) decides how much of the other (the up branch, ``u``) passes: a
gated linear unit with a swish gate. No biases, as in fla's ``GLAMLP``. Edifice's gated FFN has
the same three matrices (with biases) and the same inner size ``hidden_size * expand_factor``.
fla sizes the inner width differently (about 8/3 D rounded up), so at the same
``expand_factor`` our FFN follows Edifice, not fla; ``config.intermediate_size`` sets F directly
(``gla_np.fla`` sets it to fla's value).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from gla_np.layers._params import (check_input, check_params, check_upstream, norm_backward,
                            norm_forward, norm_init, norm_shapes, normal, put, take)
from gla_np.ops import dropout, linear, swish


def ffn_size(config):
    """F: ``config.intermediate_size``, or else ``hidden_size * expand_factor`` (Edifice's)."""
    if config.intermediate_size is not None:
        return config.intermediate_size
    return config.hidden_size * config.expand_factor


def param_shapes(config):
    """Every parameter's name and shape, in ``init_params`` order."""
    D, F = config.hidden_size, ffn_size(config)
    return {**put(norm_shapes(config.norm, D), "norm."), "W_gate": (D, F), "W_up": (D, F),
            "W_down": (F, D)}


def init_params(config, rng):
    """Norm weight 1 (bias 0 for LayerNorm); the three matrices N(0, 0.02)."""
    D, F = config.hidden_size, ffn_size(config)
    dt = np.dtype(config.dtype)
    params = put(norm_init(config.norm, D, dt), "norm.")
    params.update({"W_gate": normal(rng, (D, F), dt), "W_up": normal(rng, (D, F), dt),
                   "W_down": normal(rng, (F, D), dt)})
    return params


class FFNCache(NamedTuple):
    """Children by name plus the two branch values the product rule needs."""

    norm: Any  # NormCache of (1)
    gate_proj: Any  # LinearCache of h = zn W_gate
    gate_act: Any  # SwishCache of sh = swish(h)
    up_proj: Any  # LinearCache of u = zn W_up
    sh: np.ndarray  # (B, T, F): swish(zn W_gate), the gate branch
    u: np.ndarray  # (B, T, F): zn W_up, the up branch
    down_proj: Any  # LinearCache of (sh * u) W_down
    drop: Any  # DropoutCache


def forward(params, z, config, *, training=False, rng=None):
    """z (B, T, D) -> z + dropout(SwiGLU(Norm(z))), (B, T, D). Returns ``(out, cache)``.

    ``params`` must hold every name of ``param_shapes(config)``.
    """
    z = check_input("z", z, config.hidden_size, config.dtype)
    check_params(params, param_shapes(config), config.dtype)
    zn, c_norm = norm_forward(take(params, "norm."), z, config.norm, config.norm_eps)
    h, c_gate = linear.forward(zn, params["W_gate"])  # (B, T, F)
    sh, c_act = swish.forward(h)
    u, c_up = linear.forward(zn, params["W_up"])  # (B, T, F)
    y, c_down = linear.forward(sh * u, params["W_down"])  # (B, T, D)
    # (6): dropout is not called where it is the identity (no copy: y is our own array)
    if dropout.is_identity(config.dropout, training):
        yd, c_drop = y, dropout.identity_cache(y, config.dropout)
    else:
        yd, c_drop = dropout.forward(y, config.dropout, rng, training)
    # yd is an array made here (y, or dropout's new output), so the residual is added into it:
    # out = dropout(y) + z, the same sum as z + dropout(y)
    yd += z
    return yd, FFNCache(c_norm, c_gate, c_act, c_up, sh, u, c_down, c_drop)


def backward(dout, cache):
    """Return ``(dz, grads)``, grads keyed like params. Derivation: docs/derivations/layers/ffn.md

        dy = dropout'(dout);   dm = dy W_down^T              m = sh * u
        dsh = dm * u,   du = dm * sh,   dh = swish'(h) dsh
        dzn = dh W_gate^T + du W_up^T
        dz = dout + Norm'(dzn)

    ``dout`` None means zero; otherwise it must have the output's shape and dtype.
    """
    c = cache
    dout = check_upstream("dout", dout, c.drop.x_shape, c.drop.x_dtype)
    # forward: out = z + dropout(y)   so: dy = dropout'(dout) (the residual's dout comes last);
    # dy = dout itself where dropout is the identity (read only below)
    dy = dout if c.drop.keep is None else dropout.backward(dout, c.drop)
    # forward: y = m W_down   so: dm = dy W_down^T,  dW_down = m^T dy
    dm, dW_down, _ = linear.backward(dy, c.down_proj)
    # forward: m = sh * u   so: du = dm * sh,  dsh = dm * u (into dm, this function's own array)
    du = dm * c.sh
    dsh = dm
    dsh *= c.u
    # forward: u = zn W_up   so: dzn_up = du W_up^T,  dW_up = zn^T du
    dzn_up, dW_up, _ = linear.backward(du, c.up_proj)
    # forward: sh = swish(h),  h = zn W_gate   so: dh = swish'(h) dsh,  dzn_gate = dh W_gate^T
    dh = swish.backward(dsh, c.gate_act)
    dzn_gate, dW_gate, _ = linear.backward(dh, c.gate_proj)
    dzn = dzn_gate
    dzn += dzn_up  # zn fed two projections: dzn = dzn_gate + dzn_up, in linear's new array
    # forward: zn = Norm(z)   so: dz_norm = Norm'(dzn)
    dz_norm, n_grads = norm_backward(dzn, c.norm)
    dz = dz_norm
    dz += dout  # z fed the residual and the norm: dz = dout + dz_norm, in the norm's new array
    grads = {"W_gate": dW_gate, "W_up": dW_up, "W_down": dW_down}
    grads.update(put(n_grads, "norm."))
    return dz, grads


def step(params, z_t, config):
    """One position for streaming: z_t (B, D) -> (B, D), forward without dropout or cache.

    ``params`` are not checked here (``model.step`` and the ``edifice`` holders check them once
    per call, not at every layer of every token).
    """
    zn, _ = norm_forward(take(params, "norm."), z_t, config.norm, config.norm_eps)
    sh, _ = swish.forward(zn @ params["W_gate"])  # (B, F)
    return z_t + (sh * (zn @ params["W_up"])) @ params["W_down"]
