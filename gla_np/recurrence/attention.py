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

Shapes are head-major by default: q, k, g ``(B, H, T, K)``; v, o ``(B, H, T, V)``; states
``(B, H, K, V)``. fla's kernels take ``(B, T, H, K)``: pass ``layout="BTHK"`` and every array
in and out (do, o and the gradients too) is in that layout; states are ``(B, H, K, V)`` in both.
Shapes alone cannot tell the layouts apart when there is no initial state ((B, T, H, K) arrays
read as head-major would silently take T as heads), so a caller holding fla-layout arrays
should say so. Inputs are validated by ``check_gla_inputs`` inside each form, so every form
refuses bad input with the same messages; a state shape that fits the other layout says so.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from gla_np._checks import check_choice
from gla_np.recurrence import chunked, parallel, recurrent
from gla_np.recurrence._gla_inputs import check_cache, check_gla_inputs

MODULES = {"recurrent": recurrent, "parallel": parallel, "chunk": chunked}
CACHES = {"recurrent": recurrent.RecurrentCache, "parallel": parallel.ParallelCache,
          "chunk": chunked.ChunkedCache}
FORMS = tuple(MODULES)
LAYOUTS = ("BHTK", "BTHK")


class AttentionCache(NamedTuple):
    """The cache of ``gla_attention``: which form ran, that form's own cache, and the layout."""

    form: str  # "recurrent", "parallel" or "chunk"
    inner: tuple  # RecurrentCache, ParallelCache or ChunkedCache
    layout: str = "BHTK"  # the caller's layout: backward takes do and returns grads in it


def _heads_major(x):
    """(B, T, H, X) <-> (B, H, T, X): swap axes 1 and 2 (a view)."""
    return None if x is None else np.swapaxes(x, 1, 2)


def _heads_major_copy(x):
    """``_heads_major`` as a C-contiguous copy: the forms then see the same memory layout as for
    a (B, H, T, X) caller, so both layouts give bit-identical results (on NumPy 1.x and early 2.x
    a strided view can take another summation order in matmul and einsum)."""
    return None if x is None else np.ascontiguousarray(_heads_major(x))


def gla_attention(q, k, v, g, *, form="chunk", scale=None, initial_state=None, chunk_size=64,
                  sub_chunk_size=None, layout="BHTK", output_final_state=True):
    """Gated linear attention: return ``(o, final_state, cache)``.

    q, k, g ``(B, H, T, K)`` (g the log forget gate, <= 0; -inf is a hard reset, decay exactly
    0); v ``(B, H, T, V)``; initial_state ``(B, H, K, V)`` or None (zeros). scale defaults to
    K ** -0.5 and multiplies q. Returns o ``(B, H, T, V)`` and the final state ``(B, H, K, V)``,
    in the input dtype; with ``output_final_state=False`` the final state is None and the forms
    that can skip computing it do (``chunked.final_state(cache.inner)`` recomputes it). With
    ``layout="BTHK"`` (fla's) q, k, g are ``(B, T, H, K)`` and v, o
    ``(B, T, H, V)``; the states keep ``(B, H, K, V)``.
    """
    check_choice("form", form, FORMS)
    check_choice("layout", layout, LAYOUTS)
    if layout == "BTHK":
        check_gla_inputs(q, k, v, g, initial_state, scale, layout="BTHK")  # caller's shapes
        q, k, v, g = (_heads_major_copy(x) for x in (q, k, v, g))
        o, final_state, cache = gla_attention(
            q, k, v, g, form=form, scale=scale, initial_state=initial_state,
            chunk_size=chunk_size, sub_chunk_size=sub_chunk_size,
            output_final_state=output_final_state)
        return (np.ascontiguousarray(_heads_major(o)), final_state,
                cache._replace(layout="BTHK"))
    if form == "chunk":
        o, final_state, inner = chunked.forward(
            q, k, v, g, scale=scale, initial_state=initial_state, chunk_size=chunk_size,
            sub_chunk_size=sub_chunk_size, output_final_state=output_final_state)
    else:
        if chunk_size != 64:
            raise ValueError(f"chunk_size: only used by form='chunk', got chunk_size="
                             f"{chunk_size!r} with form={form!r}")
        if sub_chunk_size is not None:
            raise ValueError(f"sub_chunk_size: only used by form='chunk', got sub_chunk_size="
                             f"{sub_chunk_size!r} with form={form!r}")
        o, final_state, inner = MODULES[form].forward(q, k, v, g, scale=scale,
                                                      initial_state=initial_state,
                                                      output_final_state=output_final_state)
    return o, final_state, AttentionCache(form, inner)


def gla_attention_backward(do, d_final_state, cache):
    """Backward of ``gla_attention``: return ``(dq, dk, dv, dg, d_initial_state)``.

    Routes to the backward of the form that made ``cache``; each form derives its own, in
    docs/derivations/recurrence/recurrent.md, docs/derivations/recurrence/parallel.md and
    docs/derivations/recurrence/chunked.md:

        dq, dk, dv, dg, d_initial_state = <form>.backward(do, d_final_state, cache.inner)

    ``do`` ``(B, H, T, V)`` (``(B, T, H, V)`` when the forward had ``layout="BTHK"``; the
    gradients then come back in that layout too) and ``d_final_state`` ``(B, H, K, V)``; None
    means zero. d_initial_state is None when the forward had no initial state. A cache that is
    not an AttentionCache, or whose inner cache is not the named form's, is refused naming
    ``cache``.
    """
    if not isinstance(cache, AttentionCache):
        raise ValueError(f"cache: expected the AttentionCache returned by gla_attention, "
                         f"got {type(cache).__name__}")
    check_choice("cache.form", cache.form, FORMS)
    check_choice("cache.layout", cache.layout, LAYOUTS)
    if cache.layout == "BHTK":
        return MODULES[cache.form].backward(do, d_final_state, cache.inner)
    check_cache(cache.inner, CACHES[cache.form], f"{MODULES[cache.form].__name__}.forward")
    if do is not None:
        q = cache.inner.q  # (B, H, T, K), the caller's (B, T, H, K) q, heads major
        B, H, T, _ = q.shape
        expected = (B, T, H, cache.inner.v.shape[3])
        if not isinstance(do, np.ndarray) or do.shape != expected:
            got = do.shape if isinstance(do, np.ndarray) else type(do).__name__
            raise ValueError(f"do: expected shape {expected} (B, T, H, V), the layout 'BTHK' of "
                             f"the forward, got {got}")
    dq, dk, dv, dg, dS0 = MODULES[cache.form].backward(_heads_major_copy(do), d_final_state,
                                                       cache.inner)
    return (*(np.ascontiguousarray(_heads_major(x)) for x in (dq, dk, dv, dg)), dS0)
