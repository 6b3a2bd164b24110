"""Small helpers shared by the layer, the feed-forward part, the block and the model.

Parameters live in flat dicts with dotted names (``"blocks.0.attn.W_q"``), and each piece of the
model sees only its own slice with the prefix taken off (``"W_q"``). ``take`` cuts a slice out,
``put`` puts a gradient dict back under its prefix. The pre-norm is either RMSNorm (weight only,
fla and the paper) or LayerNorm (weight and bias, Edifice); ``norm_forward`` and
``norm_backward`` pick the op by the name ``kind`` so that the callers read the same either way.
``check_params`` and ``check_upstream`` are the checks every part's forward and backward share.
Nothing here has its own derivation: the norm gradients are those of ``gla_np.rmsnorm`` and
``gla_np.layernorm``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from gla_np._checks import FLOAT_DTYPES, check_array, scanning_values
from gla_np.ops import layernorm, rmsnorm

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


def norm_shapes(kind, D):
    """The norm's parameter shapes by name: weight (and bias for LayerNorm)."""
    return {"w": (D,), "b": (D,)} if kind == "layernorm" else {"w": (D,)}


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


def check_params(params, shapes, dtype):
    """Check that ``params`` has every name of ``shapes`` with that shape, ``dtype``, finite.

    Extra entries are allowed (a language model keeps its embedding and head in the same dict).
    """
    if not isinstance(params, dict):
        raise ValueError(f"params: expected a dict of arrays, got {type(params).__name__}")
    want = np.dtype(dtype)  # what every parameter is compared with, made once per call
    # Inside values_scanned() (every parameter scanned once per step) an array of the right
    # shape and dtype passes on one comparison; anything else takes the full checks below.
    quick = want.type in FLOAT_DTYPES and not scanning_values()
    for name, shape in shapes.items():
        p = params.get(name)
        if quick and isinstance(p, np.ndarray) and p.shape == shape and p.dtype == want:
            continue
        if name not in params:
            raise ValueError(f"params: missing {name!r} (expected shape {shape})")
        p = check_array(f"params[{name!r}]", p)
        if p.shape != shape or p.dtype != want:
            raise ValueError(f"params[{name!r}]: expected shape {shape} and dtype {dtype}, "
                             f"got {p.shape} {p.dtype}")


def check_upstream(name, d, shape, dtype):
    """An upstream gradient of the forward's output: zeros for None, else checked and returned.

    It must have the output's shape and dtype: a gradient in another dtype is refused rather
    than silently cast (float32 gradients into a float64 backward would lose the reference).
    """
    if d is None:
        return np.zeros(shape, dtype=dtype)
    d = check_array(name, d)
    if d.shape != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)} (the forward's output), "
                         f"got {d.shape}")
    if d.dtype != np.dtype(dtype):
        raise ValueError(f"{name}: expected dtype {np.dtype(dtype)} (the forward's dtype), "
                         f"got {d.dtype}")
    return d
