"""The gate identity: the gate gradient from dq and dk alone, without the states.

The direct formula for the log-gate gradient, dg_t = a_t * rowsum(S^_t * S_{t-1}), needs the
state S_{t-1} at every position. Without the states there is a closed form (paper section 4.3,
plus the final-state term the paper leaves out):

    dg_t = sum_{t' = t..T} (q_t' * dq_t' - k_t' * dk_t')  +  rowsum(S_T * dS_T)

The reverse cumulative sum is inclusive (t' starts at t). dq and dk are the complete gradients
of q and k (the query scale is inside dq). docs/derivations/recurrence/gate-identity.md derives it
from the direct formula in three lines.

The chunked form keeps states only at chunk boundaries, so it needs a formula of this kind, but
it does not evaluate this one as printed: it applies the identity per chunk and rearranges it so
that the terms which hold no gate (the pairs u = t, and the chunk's own writes counted twice)
are left out instead of added and cancelled, which in float32 would leave only rounding noise
when the gates are strong (docs/derivations/recurrence/chunked.md). The parallel form does the same.
This module is the identity as printed: the tests check both forms' dg against it in float64.
"""

from __future__ import annotations

import numpy as np


def reverse_cumsum(x, axis):
    """Inclusive reverse cumulative sum: ``out[t] = x[t] + x[t+1] + ... + x[-1]`` along ``axis``."""
    return np.flip(np.cumsum(np.flip(x, axis), axis), axis)


def gate_grad_from_identity(q, dq, k, dk, final_state=None, d_final_state=None):
    """Return dg ``(B, H, T, K)`` from the identity above.

    q, dq, k, dk ``(B, H, T, K)``; final_state S_T and d_final_state ``(B, H, K, V)``. When
    ``d_final_state`` is None (no gradient on the final state) the last term is zero and
    ``final_state`` is not needed. Applied to one chunk, with that chunk's end state and the
    gradient arriving on it, this gives the chunk's dg (the chunked form computes a
    rearrangement of exactly that, see the module docstring).
    """
    dg = reverse_cumsum(q * dq - k * dk, axis=2)  # (B, H, T, K)
    if d_final_state is not None:
        if final_state is None:
            raise ValueError("final_state: expected the final state (B, H, K, V) when "
                             "d_final_state is given")
        # the final state's own gate term, shared by every position t <= T
        dg = dg + np.einsum("bhkv,bhkv->bhk", final_state, d_final_state)[:, :, None, :]
    return dg
