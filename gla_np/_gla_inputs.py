"""Input checks shared by the three forms of the gated linear recurrence.

``recurrent``, ``parallel`` and ``chunked`` take the same arguments, so they validate them in one
place: :func:`check_gla_inputs` for the forward's arrays and the scale, :func:`check_gla_upstream`
for the backward's upstream gradients. Every error is a ValueError that names the argument and
says what was expected, raised before any computation.

Layout is head-major: q, k, g ``(B, H, T, K)``, v ``(B, H, T, V)``, states ``(B, H, K, V)``.
(fla's kernels take ``(B, T, H, K)``; the transpose is the layer's job, not the core's.)
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from gla_np._checks import check_array, check_same_dtype, check_shape


def _check_ndarray(name, x, ndim):
    # A list would pass check_array (it converts), but the forms index the caller's object,
    # so ask for an ndarray outright.
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name}: expected a NumPy array, got {type(x).__name__}")
    return check_array(name, x, ndim=ndim)


def check_gla_inputs(q, k, v, g, initial_state=None, scale=None):
    """Validate the arguments of a GLA form; return ``(B, H, T, K, V, scale)``.

    Checks: every array is a float32/float64 ndarray of the right rank with finite values, the
    shapes agree (q, k, g ``(B, H, T, K)``; v ``(B, H, T, V)``; initial_state ``(B, H, K, V)``),
    every size is at least 1, all arrays share one dtype, the log gates are <= 0, and ``scale``
    (default ``K ** -0.5``) is a finite positive number. The resolved scale is returned as a
    Python float.
    """
    q = _check_ndarray("q", q, 4)
    if min(q.shape) < 1:
        raise ValueError(f"q: expected shape (B, H, T, K) with every size >= 1, got {q.shape}")
    B, H, T, K = q.shape
    check_shape("k", _check_ndarray("k", k, 4), (B, H, T, K))
    check_shape("v", _check_ndarray("v", v, 4), (B, H, T, None))
    V = v.shape[3]
    if V < 1:
        raise ValueError(f"v: expected shape (B, H, T, V) with V >= 1, got {v.shape}")
    check_shape("g", _check_ndarray("g", g, 4), (B, H, T, K))
    if initial_state is not None:
        check_shape("initial_state", _check_ndarray("initial_state", initial_state, 4),
                    (B, H, K, V))
    check_same_dtype(q=q, k=k, v=v, g=g, initial_state=initial_state)
    _check_gates("g", g)
    return B, H, T, K, V, _resolve_scale(scale, K)


def check_gla_step_inputs(q_t, k_t, v_t, g_t, state=None, scale=None):
    """The same checks for one position (``recurrent.step``); return ``(B, H, K, V, scale)``.

    q_t, k_t, g_t ``(B, H, K)``; v_t ``(B, H, V)``; state ``(B, H, K, V)`` or None.
    """
    q_t = _check_ndarray("q_t", q_t, 3)
    if min(q_t.shape) < 1:
        raise ValueError(f"q_t: expected shape (B, H, K) with every size >= 1, got {q_t.shape}")
    B, H, K = q_t.shape
    check_shape("k_t", _check_ndarray("k_t", k_t, 3), (B, H, K))
    check_shape("v_t", _check_ndarray("v_t", v_t, 3), (B, H, None))
    V = v_t.shape[2]
    if V < 1:
        raise ValueError(f"v_t: expected shape (B, H, V) with V >= 1, got {v_t.shape}")
    check_shape("g_t", _check_ndarray("g_t", g_t, 3), (B, H, K))
    if state is not None:
        check_shape("state", _check_ndarray("state", state, 4), (B, H, K, V))
    check_same_dtype(q_t=q_t, k_t=k_t, v_t=v_t, g_t=g_t, state=state)
    _check_gates("g_t", g_t)
    return B, H, K, V, _resolve_scale(scale, K)


def _check_gates(name, g):
    if (g > 0).any():
        raise ValueError(f"{name}: expected log forget gates <= 0 (the log of a gate in (0, 1]), "
                         f"got a maximum of {g.max()!r}")


def _resolve_scale(scale, K):
    if scale is None:
        return K ** -0.5
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise ValueError(f"scale: expected a finite positive number, got {scale!r}")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale: expected a finite positive number, got {scale!r}")
    return float(scale)


def check_gla_upstream(do, d_final_state, B, H, T, K, V, dtype):
    """Validate a backward's upstream gradients; return them as ``dtype`` arrays.

    ``do`` must be ``(B, H, T, V)`` and ``d_final_state`` ``(B, H, K, V)``; ``None`` means zero
    and is returned as zeros (for ``do``) or ``None`` (for ``d_final_state``). The result never
    aliases a caller's array that backward could write into (backward does not write anyway).
    """
    if do is None:
        do = np.zeros((B, H, T, V), dtype=dtype)
    else:
        check_shape("do", _check_ndarray("do", do, 4), (B, H, T, V))
        do = do.astype(dtype, copy=False)
    if d_final_state is not None:
        check_shape("d_final_state", _check_ndarray("d_final_state", d_final_state, 4),
                    (B, H, K, V))
        d_final_state = d_final_state.astype(dtype, copy=False)
    return do, d_final_state
