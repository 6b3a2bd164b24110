"""One block: the GLA layer, then the gated feed-forward part, each pre-norm with a residual.

    h   = x + GLA(Norm(x))        gla_layer (its norm and residual inside)     (1)
    out = h + FFN(Norm(h))        ffn (likewise)                               (2)

This is the block of the paper, of fla and of Edifice alike. Params: the layer's under
``"attn."``, the feed-forward part's under ``"ffn."``.
"""

from __future__ import annotations

import functools
import types
from typing import Any, NamedTuple

from gla_np.layers import ffn, gla_layer
from gla_np.layers._params import check_input, check_params, check_upstream, put, take


def param_shapes(config):
    """Every parameter's name and shape: the layer's under "attn.", the FFN's under "ffn."."""
    return {**put(gla_layer.param_shapes(config), "attn."),
            **put(ffn.param_shapes(config), "ffn.")}


@functools.lru_cache(maxsize=32)
def _shapes(config):
    """``param_shapes(config)`` made once per config, read-only, for forward's check."""
    return types.MappingProxyType(param_shapes(config))


def init_params(config, rng):
    """The layer's params under "attn.", then the FFN's under "ffn." (drawn in that order)."""
    params = put(gla_layer.init_params(config, rng), "attn.")
    params.update(put(ffn.init_params(config, rng), "ffn."))
    return params


class BlockCache(NamedTuple):
    """The two children's caches, by name."""

    attn: Any  # GLALayerCache of (1)
    ffn: Any  # FFNCache of (2)


def forward(params, x, config, *, training=False, rng=None):
    """x (B, T, D) -> (B, T, D). Returns ``(out, cache)``. Dropout draws layer first, then FFN.

    ``params`` must hold every name of ``param_shapes(config)``.
    """
    x = check_input("x", x, config.hidden_size, config.dtype)
    check_params(params, _shapes(config), config.dtype)
    h, c_attn = gla_layer.forward(take(params, "attn."), x, config, training=training, rng=rng)
    out, c_ffn = ffn.forward(take(params, "ffn."), h, config, training=training, rng=rng)
    return out, BlockCache(c_attn, c_ffn)


def backward(dout, cache):
    """Return ``(dx, grads)``. Derivation: docs/derivations/layers/block.md

        dh = ffn'(dout)      (the residual's identity path is inside ffn.backward)
        dx = gla_layer'(dh)

    ``dout`` None means zero; otherwise it must have the output's shape and dtype.
    """
    c_ffn = cache.ffn
    dout = check_upstream("dout", dout, c_ffn.drop.x_shape, c_ffn.drop.x_dtype)
    # forward: out = ffn(h)   so: dh = ffn'(dout)
    dh, ffn_grads = ffn.backward(dout, c_ffn)
    # forward: h = gla_layer(x)   so: dx = gla_layer'(dh)
    dx, attn_grads = gla_layer.backward(dh, cache.attn)
    grads = put(attn_grads, "attn.")
    grads.update(put(ffn_grads, "ffn."))
    return dx, grads


def step(params, x_t, state, config):
    """One position for streaming: x_t (B, D), state a ``gla_layer.LayerState``.

    Returns ``(y_t, new_state)``. The FFN acts on each position alone, so it needs no state.
    ``params`` are not checked here: ``model.step`` and the ``edifice`` holders check them once
    per call.
    """
    h_t, new_state = gla_layer.step(take(params, "attn."), x_t, state, config)
    return ffn.step(take(params, "ffn."), h_t, config), new_state
