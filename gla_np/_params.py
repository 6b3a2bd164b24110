"""Small helpers shared by the layer, the feed-forward part, the block and the model.

Parameters live in flat dicts with dotted names (``"blocks.0.attn.W_q"``), and each piece of the
model sees only its own slice with the prefix taken off (``"W_q"``). ``take`` cuts a slice out,
``put`` puts a gradient dict back under its prefix. The pre-norm is either RMSNorm (weight only,
fla and the paper) or LayerNorm (weight and bias, Edifice); ``norm_forward`` and
``norm_backward`` pick the op by the name ``kind`` so that the callers read the same either way.
Nothing here has its own derivation: the norm gradients are those of ``gla_np.rmsnorm`` and
``gla_np.layernorm``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from gla_np import layernorm, rmsnorm
from gla_np._checks import check_array

INIT_STD = 0.02  # fla's initializer_range: every weight matrix starts as N(0, 0.02^2)


def take(params, prefix):
    """The entries of ``params`` whose names start with ``prefix``, with the prefix removed."""
    return {name[len(prefix):]: p for name, p in params.items() if name.startswith(prefix)}


def put(grads, prefix):
    """The inverse of ``take``: the same dict with ``prefix`` put in front of every name."""
    return {prefix + name: g for name, g in grads.items()}


def normal(rng, shape, dtype):
    """A weight matrix drawn from N(0, INIT_STD^2), in ``dtype``."""
    return (INIT_STD * rng.standard_normal(shape)).astype(dtype)


def norm_init(kind, D, dtype):
    """Norm parameters at init: weight 1 (and bias 0 for LayerNorm)."""
    params = {"w": np.ones(D, dtype=dtype)}
    if kind == "layernorm":
        params["b"] = np.zeros(D, dtype=dtype)
    return params


class NormCache(NamedTuple):
    """The child op's cache and which op it was (RMSNorm has no bias to return)."""

    kind: str  # "rmsnorm" or "layernorm"
    op: Any  # RMSNormCache or LayerNormCache


def norm_forward(params, x, kind, eps):
    """Normalize x over its last axis with the norm ``kind``; params holds "w" (and "b")."""
    if kind == "layernorm":
        y, op = layernorm.forward(x, params["w"], params["b"], eps)
    else:
        y, op = rmsnorm.forward(x, params["w"], eps)
    return y, NormCache(kind, op)


def norm_backward(dy, cache):
    """Return ``(dx, grads)`` for ``norm_forward``, grads keyed like its params."""
    if cache.kind == "layernorm":
        dx, dw, db = layernorm.backward(dy, cache.op)
        return dx, {"w": dw, "b": db}
    dx, dw = rmsnorm.backward(dy, cache.op)
    return dx, {"w": dw}


def check_input(name, x, width, dtype, *, step=False):
    """Validate a (B, T, width) input (``step``: (B, width)) of the config's dtype, early."""
    want = f"(B, {width})" if step else f"(B, T, {width})"
    x = check_array(name, x, ndim=2 if step else 3)
    if x.shape[-1] != width or min(x.shape) < 1:
        raise ValueError(f"{name}: expected shape {want} with every size >= 1, got {x.shape}")
    if x.dtype != np.dtype(dtype):
        raise ValueError(f"{name}: expected dtype {dtype} (the config's dtype), got {x.dtype}")
    return x
