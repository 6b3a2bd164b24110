"""Hypothesis strategies for GLA inputs: :func:`gla_examples` draws a :class:`GLAExample`.

hypothesis is a test-only dependency of gla_np: it is imported when :func:`gla_examples` is
called, not when this module is.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from gla_np._checks import check_choice
from gla_np.testing.float64_reference import LAYOUTS, _heads_major


class GLAExample(NamedTuple):
    """One drawn input set (see :func:`gla_examples`), in the requested dtype and layout."""

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    g: np.ndarray
    initial_state: np.ndarray | None
    do: np.ndarray | None
    d_final_state: np.ndarray | None
    gate_strength: float  # the per-step |g| scale the gates were drawn with
    scale: float  # the query scale to use: K ** -0.5 or a drawn other value


def _hypothesis():
    try:
        import hypothesis.strategies as st
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("gla_np.testing needs hypothesis for drawn examples, a test-only "
                          "dependency of gla_np: pip install hypothesis (or gla-np[test])") from err
    return st


def gla_examples(*, dtype=np.float32, layout="BHTK", max_T=70, max_width=6,
                 strengths=(0.0, 1e-3, 0.1, 1.0, 5.0, 30.0), chunk_sizes=(16, 32, 64),
                 resets=False):
    """A hypothesis strategy drawing :class:`GLAExample` inputs for a GLA kernel.

    Shapes: B, H in 1..2; K, V in 1..max_width (K = 1 included); T in 1..max_T: up to 70 a third
    of the time, just off a multiple of one of ``chunk_sizes`` a third (a ragged last chunk),
    anywhere up to ``max_T`` the rest; with ``max_T`` > 70 a quarter of the draws are long
    instead (``max_T`` / 4 to ``max_T``, and ``max_T`` itself). Gates: per-step strength from
    ``strengths`` (0 is no decay at all), every entry at -strength or uniform in [-strength, 0];
    with ``resets`` some draws put -inf (a hard reset) at a few steps. Values: standard normal, or a cancelling
    variant where v repeats with alternating sign, so that outputs sum to little. The scale:
    K ** -0.5 or another value (1 or 0.3). Initial state, do and d_final_state each on or off
    (not both upstream gradients off). Needs hypothesis, imported on call.
    """
    st = _hypothesis()
    check_choice("layout", layout, LAYOUTS)
    np_dtype = np.dtype(dtype)

    @st.composite
    def draw_example(draw):
        B, H = draw(st.integers(1, 2)), draw(st.integers(1, 2))
        K, V = draw(st.integers(1, max_width)), draw(st.integers(1, max_width))
        C = draw(st.sampled_from(chunk_sizes))
        near = [t for t in (C - 1, C + 1, 2 * C - 1, 2 * C + 1) if 1 <= t <= max_T] or [1]
        lengths = [st.integers(1, min(max_T, 70)), st.sampled_from(near), st.integers(1, max_T)]
        if max_T > 70:  # training lengths: a quarter of the draws from max_T / 4 up, max_T too
            lengths.append(st.one_of(st.just(max_T), st.integers(max_T // 4, max_T)))
        T = draw(st.one_of(*lengths))
        strength = draw(st.sampled_from(strengths))
        rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
        q, k = rng.standard_normal((2, B, H, T, K))
        v = rng.standard_normal((B, H, T, V))
        if draw(st.booleans()):  # cancelling values: v_t = (-1)^t v_0, k shared
            v = v[:, :, :1] * (-1.0) ** np.arange(T)[None, None, :, None]
            k = np.broadcast_to(k[:, :, :1], k.shape).copy()
        u = np.ones((B, H, T, K)) if draw(st.booleans()) else rng.uniform(0, 1, (B, H, T, K))
        g = -strength * u
        if resets and draw(st.booleans()):
            g[:, :, rng.integers(0, T, 1 + T // 16)] = -np.inf  # every channel forgets there
            g[rng.random(g.shape) < 0.02] = -np.inf  # and single channels here and there
        scale = draw(st.sampled_from([K ** -0.5, 1.0, 0.3]))
        S0 = rng.standard_normal((B, H, K, V)) if draw(st.booleans()) else None
        with_do, with_dS = draw(st.sampled_from([(True, True), (True, False), (False, True)]))
        do = rng.standard_normal((B, H, T, V)) if with_do else None
        dS_T = rng.standard_normal((B, H, K, V)) if with_dS else None
        cast = [None if x is None else x.astype(np_dtype) for x in (q, k, v, g, S0, do, dS_T)]
        for i in (0, 1, 2, 3, 5):
            cast[i] = None if cast[i] is None else np.ascontiguousarray(
                _heads_major(cast[i], layout))
        return GLAExample(*cast, gate_strength=float(strength), scale=float(scale))

    return draw_example()
