"""Input checks shared by the three forms of the gated linear recurrence.

``recurrent``, ``parallel`` and ``chunked`` take the same arguments, so they validate them in one
place: :func:`check_gla_inputs` for the forward's arrays and the scale, :func:`check_gla_upstream`
for the backward's upstream gradients. Every error is a ValueError that names the argument and
says what was expected, raised before any computation.

Layout is head-major: q, k, g ``(B, H, T, K)``, v ``(B, H, T, V)``, states ``(B, H, K, V)``.
(fla's kernels take ``(B, T, H, K)``; the transpose is the layer's job, not the core's.)
"""

from __future__ import annotations

import numpy as np

from gla_np._checks import check_array, check_positive_real, check_same_dtype, check_shape


def _check_ndarray(name, x, ndim):
    # A list would pass check_array (it converts), but the forms index the caller's object,
    # so ask for an ndarray outright.
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name}: expected a NumPy array, got {type(x).__name__}")
    return check_array(name, x, ndim=ndim)


def _check_arguments(names, lead_letters, q, k, v, g, state, scale):
    """The checks behind both public functions; return ``(*lead, K, V, scale)``.

    ``names`` are the argument names (q, k, v, g, state) the messages use. q, k, g have shape
    ``(*lead, K)`` and v ``(*lead, V)``, with lead spelled ``lead_letters``: ("B", "H", "T") for
    a sequence, ("B", "H") for one step. The state is ``(B, H, K, V)`` either way.
    """
    q_name, k_name, v_name, g_name, state_name = names
    rank = len(lead_letters) + 1

    def spelled(last):
        return "(" + ", ".join((*lead_letters, last)) + ")"

    q = _check_ndarray(q_name, q, rank)
    if min(q.shape) < 1:
        raise ValueError(f"{q_name}: expected shape {spelled('K')} with every size >= 1, "
                         f"got {q.shape}")
    *lead, K = q.shape
    check_shape(k_name, _check_ndarray(k_name, k, rank), (*lead, K))
    check_shape(v_name, _check_ndarray(v_name, v, rank), (*lead, None))
    V = v.shape[-1]
    if V < 1:
        raise ValueError(f"{v_name}: expected shape {spelled('V')} with V >= 1, got {v.shape}")
    check_shape(g_name, _check_ndarray(g_name, g, rank), (*lead, K))
    if state is not None:
        check_shape(state_name, _check_ndarray(state_name, state, 4), (*lead[:2], K, V))
    check_same_dtype(**{q_name: q, k_name: k, v_name: v, g_name: g, state_name: state})
    if (g > 0).any():
        raise ValueError(f"{g_name}: expected log forget gates <= 0 (the log of a gate in "
                         f"(0, 1]), got a maximum of {g.max()!r}")
    scale = K ** -0.5 if scale is None else check_positive_real("scale", scale)
    return (*lead, K, V, scale)


def check_gla_inputs(q, k, v, g, initial_state=None, scale=None):
    """Validate the arguments of a GLA form; return ``(B, H, T, K, V, scale)``.

    Checks: every array is a float32/float64 ndarray of the right rank with finite values, the
    shapes agree (q, k, g ``(B, H, T, K)``; v ``(B, H, T, V)``; initial_state ``(B, H, K, V)``),
    every size is at least 1, all arrays share one dtype, the log gates are <= 0, and ``scale``
    (default ``K ** -0.5``) is a positive finite number. The resolved scale is returned as a
    Python float.
    """
    return _check_arguments(("q", "k", "v", "g", "initial_state"), ("B", "H", "T"),
                            q, k, v, g, initial_state, scale)


def check_gla_step_inputs(q_t, k_t, v_t, g_t, state=None, scale=None):
    """The same checks for one position (``recurrent.step``); return ``(B, H, K, V, scale)``.

    q_t, k_t, g_t ``(B, H, K)``; v_t ``(B, H, V)``; state ``(B, H, K, V)`` or None.
    """
    return _check_arguments(("q_t", "k_t", "v_t", "g_t", "state"), ("B", "H"),
                            q_t, k_t, v_t, g_t, state, scale)


def _check_upstream(name, x, shape, dtype):
    check_shape(name, _check_ndarray(name, x, len(shape)), shape)
    if x.dtype != dtype:
        # Casting would hide a mixed-precision graph (say a float64 loss over a float32 model)
        # and, for float64 into float32, silently round the gradient.
        raise ValueError(f"{name}: expected dtype {np.dtype(dtype)} (the forward's dtype), "
                         f"got {x.dtype}")
    return x


def check_gla_upstream(do, d_final_state, B, H, T, K, V, dtype):
    """Validate a backward's upstream gradients; return them.

    ``do`` must be ``(B, H, T, V)`` and ``d_final_state`` ``(B, H, K, V)``, both finite and of
    the forward's ``dtype`` (a different dtype is refused, not cast). ``None`` means zero and is
    returned as zeros (for ``do``) or ``None`` (for ``d_final_state``). Backward never writes
    into what this returns.
    """
    if do is None:
        do = np.zeros((B, H, T, V), dtype=dtype)
    else:
        do = _check_upstream("do", do, (B, H, T, V), dtype)
    if d_final_state is not None:
        d_final_state = _check_upstream("d_final_state", d_final_state, (B, H, K, V), dtype)
    return do, d_final_state
