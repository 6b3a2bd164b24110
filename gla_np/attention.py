"""The public entry point to the gated linear recurrence: one function, three forms.

    o, final_state, cache = gla_attention(q, k, v, g, form="chunk")
    dq, dk, dv, dg, d_initial_state = gla_attention_backward(do, d_final_state, cache)

The forms compute the same map (the tests check that they agree to rounding) and differ in cost:

    "recurrent"  the definition: a loop over time, O(T K V) per head, stores every state.
    "parallel"   attention with a decay mask: O(T^2 K) memory, for teaching and checking.
    "chunk"      the paper's chunkwise algorithm: matmuls within chunks, a recurrence across.

``chunk_size`` and ``sub_chunk_size`` belong to the chunked form only. Passing a non-default
value with another form is an error (a ValueError naming the argument), not silently ignored:
a caller who sets a chunk size believes it does something.

Shapes are head-major: q, k, g ``(B, H, T, K)``; v, o ``(B, H, T, V)``; states ``(B, H, K, V)``.
(fla's kernels take ``(B, T, H, K)``.) Inputs are validated by ``check_gla_inputs`` inside
each form, so every form refuses bad input with the same messages.
"""

from __future__ import annotations

from typing import NamedTuple

from gla_np import chunked, parallel, recurrent
from gla_np._checks import check_choice

MODULES = {"recurrent": recurrent, "parallel": parallel, "chunk": chunked}
FORMS = tuple(MODULES)


class AttentionCache(NamedTuple):
    """The cache of ``gla_attention``: which form ran, and that form's own cache."""

    form: str  # "recurrent", "parallel" or "chunk"
    inner: tuple  # RecurrentCache, ParallelCache or ChunkedCache


def gla_attention(q, k, v, g, *, form="chunk", scale=None, initial_state=None, chunk_size=64,
                  sub_chunk_size=None):
    """Gated linear attention: return ``(o, final_state, cache)``.

    q, k, g ``(B, H, T, K)`` (g the log forget gate, <= 0); v ``(B, H, T, V)``; initial_state
    ``(B, H, K, V)`` or None (zeros). scale defaults to K ** -0.5 and multiplies q. Returns
    o ``(B, H, T, V)`` and the final state ``(B, H, K, V)``, in the input dtype.
    """
    check_choice("form", form, FORMS)
    if form == "chunk":
        o, final_state, inner = chunked.forward(
            q, k, v, g, scale=scale, initial_state=initial_state, chunk_size=chunk_size,
            sub_chunk_size=sub_chunk_size)
    else:
        if chunk_size != 64:
            raise ValueError(f"chunk_size: only used by form='chunk', got chunk_size="
                             f"{chunk_size!r} with form={form!r}")
        if sub_chunk_size is not None:
            raise ValueError(f"sub_chunk_size: only used by form='chunk', got sub_chunk_size="
                             f"{sub_chunk_size!r} with form={form!r}")
        o, final_state, inner = MODULES[form].forward(q, k, v, g, scale=scale,
                                                      initial_state=initial_state)
    return o, final_state, AttentionCache(form, inner)


def gla_attention_backward(do, d_final_state, cache):
    """Backward of ``gla_attention``: return ``(dq, dk, dv, dg, d_initial_state)``.

    Routes to the backward of the form that made ``cache``; each form derives its own, in
    docs/derivations/recurrent.md, docs/derivations/parallel.md and docs/derivations/chunked.md:

        dq, dk, dv, dg, d_initial_state = <form>.backward(do, d_final_state, cache.inner)

    ``do`` ``(B, H, T, V)`` and ``d_final_state`` ``(B, H, K, V)``; None means zero.
    d_initial_state is None when the forward had no initial state.
    """
    if not isinstance(cache, AttentionCache):
        raise ValueError(f"cache: expected the AttentionCache returned by gla_attention, "
                         f"got {type(cache).__name__}")
    check_choice("cache.form", cache.form, FORMS)
    return MODULES[cache.form].backward(do, d_final_state, cache.inner)
