"""Input checks shared by the three forms of the gated linear recurrence.

``recurrent``, ``parallel`` and ``chunked`` take the same arguments, so they validate them in one
place: :func:`check_gla_inputs` for the forward's arrays and the scale, :func:`check_gla_upstream`
for the backward's upstream gradients. Every error is a ValueError that names the argument and
says what was expected, raised before any computation.

Layout is head-major: q, k, g ``(B, H, T, K)``, v ``(B, H, T, V)``, states ``(B, H, K, V)``.
(fla's kernels take ``(B, T, H, K)``; the transpose is the layer's job, or ``gla_attention``'s
with ``layout="BTHK"``.) Shapes alone cannot tell the two layouts apart when no initial state is
given; when a shape check fails and the shapes fit the other layout, the message says so.

Log gates may be ``-inf`` (a hard reset: decay exactly 0) or any finite value <= 0. Every form
first applies :func:`floor_log_gates`, which is exact (docs/derivations/recurrence/recurrent.md,
"Hard resets and huge gates").
"""

from __future__ import annotations

import numpy as np

from gla_np._checks import (check_array, check_positive_real, check_same_dtype, check_shape,
                            scanning_values)

# The log-gate floor per dtype: the first power of two below ln(smallest subnormal / 2), the
# point under which exp rounds to exactly 0 (float32: -103.97, float64: -745.13). A gate at or
# below the floor has decay exp(g) = 0 exactly in that dtype, so flooring changes no decay; the
# margin (24 and 279) absorbs the rounding of the cumulative sums, and with every gate >= the
# floor a cumulative sum over T steps is at least T * floor: it cannot overflow for any T that
# fits in memory. docs/derivations/recurrence/recurrent.md, "Hard resets and huge gates", has the
# argument.
LOG_GATE_FLOOR = {np.dtype(np.float32): -128.0, np.dtype(np.float64): -1024.0}


def floor_log_gates(g):
    """Return ``(max(g, floor), reset)``: the log gates floored for their dtype, and a boolean
    ``(B, H, T, K)`` mask of the gates at or below the floor (None when there are none).

    Exact: a floored gate's decay exp(g) is 0 in the dtype either way. The mask lets backward
    set dg = 0 there exactly: the derivative of max(g, floor) is 0 below the floor, and the
    limit of dL/dg = a * (...) as the decay a -> 0 is 0 too.
    """
    floor = g.dtype.type(LOG_GATE_FLOOR[g.dtype])
    if g.size == 0 or g.min() > floor:  # one reduction, no mask, when no gate is that strong
        return g, None
    reset = g <= floor
    if not reset.any():  # a nan makes the minimum nan: no gate is below the floor after all
        return g, None
    return np.maximum(g, floor), reset


def check_cache(cache, cache_type, forward_name):
    """Check that ``cache`` is a ``cache_type`` (what ``forward_name`` returns); return it."""
    if not isinstance(cache, cache_type):
        raise ValueError(f"cache: expected the {cache_type.__name__} returned by {forward_name}, "
                         f"got {type(cache).__name__}")
    return cache


def _check_ndarray(name, x, ndim, finite=True):
    # A list would pass check_array (it converts), but the forms index the caller's object,
    # so ask for an ndarray outright.
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name}: expected a NumPy array, got {type(x).__name__}")
    return check_array(name, x, ndim=ndim, finite=finite)


def _gates_at_most_zero(g):
    """True when every log gate is <= 0, so none is nan, +inf or positive: one reduction, the
    common case. False sends the gate checks to the passes that find which fault it is."""
    return g.size == 0 or bool(g.max() <= 0)


def _check_g(name, g, rank):
    """The log gates: like the other arrays, but -inf (decay exactly 0) is allowed."""
    g = _check_ndarray(name, g, rank, finite=False)
    if (scanning_values() and not _gates_at_most_zero(g)
            and (np.isnan(g).any() or np.isposinf(g).any())):
        raise ValueError(f"{name}: contains nan or +inf; expected log forget gates in "
                         f"[-inf, 0] (-inf is a hard reset, decay exactly 0)")
    return g


OTHER_LAYOUT = {"BHTK": "BTHK", "BTHK": "BHTK"}
SPELLED = {"BHTK": "(B, H, T, K)", "BTHK": "(B, T, H, K)"}


def _layout_hint(layout, x_shape, V, state_shape):
    """A sentence for a state-shape error when the shapes fit the other layout, else ''.

    x_shape is q's shape; under the other layout the heads sit on the other of axes 1 and 2.
    """
    if len(x_shape) != 4 or x_shape[1] == x_shape[2]:
        return ""
    other = OTHER_LAYOUT[layout]
    other_heads = x_shape[2] if layout == "BHTK" else x_shape[1]
    if tuple(state_shape) != (x_shape[0], other_heads, x_shape[3], V):
        return ""
    return (f"; the inputs look like the {SPELLED[other]} layout ({other}) while "
            f"{SPELLED[layout]} ({layout}) was expected: transpose axes 1 and 2, or call "
            f"gla_attention(..., layout={other!r})")


def _check_sequence_shape(name, x, expected, layout):
    """check_shape for a (B, ., ., X) sequence array, adding a layout sentence when the array
    has the expected shape with axes 1 and 2 swapped (one array in the other layout)."""
    try:
        check_shape(name, x, expected)
    except ValueError as err:
        if len(expected) != 4 or len(x.shape) != 4 or expected[1] == expected[2]:
            raise
        swapped = (expected[0], expected[2], expected[1], expected[3])
        if all(e is None or e == s for s, e in zip(x.shape, swapped)):
            other = OTHER_LAYOUT[layout]
            raise ValueError(f"{err}; {name} looks like the {SPELLED[other]} layout ({other}) "
                             f"while the others are {SPELLED[layout]} ({layout}): transpose "
                             f"its axes 1 and 2") from None
        raise
    return x


def _check_arguments(names, lead_letters, q, k, v, g, state, scale, layout="BHTK"):
    """The checks behind both public functions; return ``(*lead, K, V, scale)``.

    ``names`` are the argument names (q, k, v, g, state) the messages use. q, k, g have shape
    ``(*lead, K)`` and v ``(*lead, V)``, with lead spelled ``lead_letters``: ("B", "H", "T") for
    a sequence, ("B", "H") for one step, ("B", "T", "H") for a sequence in fla's layout (then
    ``layout="BTHK"`` and the returned lead is still (B, H, T)). The state is ``(B, H, K, V)``.
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
    _check_sequence_shape(k_name, _check_ndarray(k_name, k, rank), (*lead, K), layout)
    _check_sequence_shape(v_name, _check_ndarray(v_name, v, rank), (*lead, None), layout)
    V = v.shape[-1]
    if V < 1:
        raise ValueError(f"{v_name}: expected shape {spelled('V')} with V >= 1, got {v.shape}")
    _check_sequence_shape(g_name, _check_g(g_name, g, rank), (*lead, K), layout)
    heads = lead[:2] if layout == "BHTK" or rank == 3 else (lead[0], lead[2])  # (B, H)
    if state is not None:
        _check_ndarray(state_name, state, 4)
        try:
            check_shape(state_name, state, (*heads, K, V))
        except ValueError as err:
            raise ValueError(str(err) + _layout_hint(layout, q.shape, V, state.shape)) from None
    check_same_dtype(**{q_name: q, k_name: k, v_name: v, g_name: g, state_name: state})
    if not _gates_at_most_zero(g) and (g > 0).any():
        raise ValueError(f"{g_name}: expected log forget gates <= 0 (the log of a gate in "
                         f"(0, 1]), got a maximum of {g.max()!r}")
    scale = K ** -0.5 if scale is None else check_positive_real("scale", scale)
    if layout == "BTHK" and rank == 4:
        lead = [lead[0], lead[2], lead[1]]  # report (B, H, T)
    return (*lead, K, V, scale)


def check_gla_inputs(q, k, v, g, initial_state=None, scale=None, layout="BHTK"):
    """Validate the arguments of a GLA form; return ``(B, H, T, K, V, scale)``.

    Checks: every array is a float32/float64 ndarray of the right rank with finite values (the
    log gates may also be -inf), the shapes agree (q, k, g ``(B, H, T, K)``; v ``(B, H, T, V)``;
    initial_state ``(B, H, K, V)``; with ``layout="BTHK"`` the arrays are ``(B, T, H, K)`` and
    ``(B, T, H, V)``), every size is at least 1, all arrays share one dtype, the log gates are
    <= 0, and ``scale`` (default ``K ** -0.5``) is a positive finite number. The resolved scale
    is returned as a Python float.
    """
    lead = ("B", "H", "T") if layout == "BHTK" else ("B", "T", "H")
    return _check_arguments(("q", "k", "v", "g", "initial_state"), lead,
                            q, k, v, g, initial_state, scale, layout)


def check_gla_step_inputs(q_t, k_t, v_t, g_t, state=None, scale=None):
    """The same checks for one position (``recurrent.step``); return ``(B, H, K, V, scale)``.

    q_t, k_t, g_t ``(B, H, K)``; v_t ``(B, H, V)``; state ``(B, H, K, V)`` or None.
    """
    return _check_arguments(("q_t", "k_t", "v_t", "g_t", "state"), ("B", "H"),
                            q_t, k_t, v_t, g_t, state, scale)


def _check_upstream(name, x, shape, dtype):
    _check_sequence_shape(name, _check_ndarray(name, x, len(shape)), shape, "BHTK")
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
