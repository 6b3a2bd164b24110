"""Hard resets and huge gates: a log gate of -inf, or any finite one, works in every form.

A log gate below the dtype's floor (``LOG_GATE_FLOOR``: -128 in float32, -1024 in float64) has
decay exp(g) = 0 exactly in that dtype, so every form floors it first: exact, and it keeps the
cumulative sums from overflowing. Before this, float32 gates near -3e38 made the chunked and
parallel forms return nan, a gate of -1e30 followed by ordinary gates gave them a silently wrong
answer (the cumulative sum absorbed the later gates: errors of 160 % to 540 %), and -inf was refused.
"""

import numpy as np
import pytest

from gla_np import chunked, parallel, recurrent, recurrent as rec
from gla_np.gradcheck import gradcheck
from gla_np.recurrence._gla_inputs import LOG_GATE_FLOOR

FORMS = {"recurrent": (recurrent, {}), "parallel": (parallel, {}),
         "chunk": (chunked, dict(chunk_size=4, sub_chunk_size=2))}
DTYPES = [np.float32, np.float64]


def make(seed, B=2, H=2, T=11, K=3, V=2, dtype=np.float64, strength=0.5):
    rng = np.random.default_rng(seed)
    q, k = rng.standard_normal((2, B, H, T, K))
    v, do = rng.standard_normal((2, B, H, T, V))
    g = -strength * rng.uniform(0, 1, (B, H, T, K))
    S0, dS_T = rng.standard_normal((2, B, H, K, V))
    return [x.astype(dtype) for x in (q, k, v, g, S0, do, dS_T)]


def run(form, q, k, v, g, S0, do, dS_T):
    module, options = FORMS[form]
    o, S_T, cache = module.forward(q, k, v, g, initial_state=S0, **options)
    return (o, S_T, *module.backward(do, dS_T, cache))


def rel(x, ref):
    scale = np.abs(ref).max()
    err = np.abs(x - ref).max()
    return float(err / scale) if scale > 0 else float(err)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("form", list(FORMS))
def test_every_gate_below_the_floor_gives_the_same_bits(form, dtype):
    """-inf, the most negative finite number, -1e30 and the floor itself are one decay, 0."""
    q, k, v, g, S0, do, dS_T = make(0, dtype=dtype)
    results = []
    for value in [-np.inf, np.finfo(dtype).min, -1e30, LOG_GATE_FLOOR[np.dtype(dtype)]]:
        g2 = g.copy()
        g2[:, :, 3, 1] = value  # one channel reset at one step
        g2[:, :, 7] = value  # every channel reset at another
        out = run(form, q, k, v, g2, S0, do, dS_T)
        assert all(np.isfinite(x).all() for x in out), (form, value)
        results.append(out)
    for out in results[1:]:
        for got, want in zip(out, results[0]):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("form", list(FORMS))
def test_a_full_reset_restarts_the_sequence_from_a_zero_state(form, dtype):
    """With g_r = -inf in every channel, positions t >= r see exactly the suffix run on its own."""
    q, k, v, g, S0, do, dS_T = make(1, T=9, dtype=dtype)
    r = 4
    g[:, :, r] = -np.inf
    module, options = FORMS[form]
    o, S_T, _ = module.forward(q, k, v, g, initial_state=S0, **options)
    tail = [x[:, :, r:] for x in (q, k, v, g)]
    tail[3] = tail[3].copy()
    tail[3][:, :, 0] = 0.0  # the first step of the suffix starts from a zero state anyway
    o_tail, S_tail, _ = recurrent.forward(*tail)
    tol = 1e-12 if dtype == np.float64 else 1e-4
    assert rel(o[:, :, r:], o_tail) < tol and rel(S_T, S_tail) < tol


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("form", ["parallel", "chunk"])
def test_forms_agree_with_recurrent_around_resets_and_huge_gates(form, dtype):
    """The failure before the floor: -1e30 then ordinary gates (silently off by over 100 %), and -3e38
    (nan from the overflowing cumulative sum). Both now agree with the recurrent form."""
    for value in [-1e30, np.finfo(dtype).min, -np.inf, -200.0, -60.0]:
        q, k, v, g, S0, do, dS_T = make(2, dtype=dtype)
        g[:, :, 0] = value
        g[0, 1, 5, 2] = value
        want = run("recurrent", q, k, v, g, S0, do, dS_T)
        got = run(form, q, k, v, g, S0, do, dS_T)
        tol = 1e-10 if dtype == np.float64 else 1e-4
        for name, x, ref in zip(["o", "S_T", "dq", "dk", "dv", "dg", "dS0"], got, want):
            assert np.isfinite(x).all() and rel(x, ref) < tol, (form, value, name, rel(x, ref))


@pytest.mark.parametrize("form", list(FORMS))
def test_the_gradient_at_a_reset_gate_is_exactly_zero(form):
    q, k, v, g, S0, do, dS_T = make(3, dtype=np.float32)
    g[:, :, 2, 0] = -np.inf
    g[:, :, 6] = -5e37
    dg = run(form, q, k, v, g, S0, do, dS_T)[5]
    assert (dg[:, :, 2, 0] == 0).all() and (dg[:, :, 6] == 0).all()
    assert (dg[:, :, 3:6] != 0).all()  # the others are ordinary gradients


@pytest.mark.parametrize("form", list(FORMS))
def test_gradients_match_finite_differences_around_hard_resets(form):
    """float64 finite differences of q, k, v, S_0 with two gates held at -inf, and of g with huge
    finite gates (-2000: below the float64 floor, where the true derivative is 0, and -30:
    above it, where it is tiny but not 0)."""
    module, options = FORMS[form]
    q, k, v, g, S0, _, _ = make(4, B=1, H=2, T=7, K=2, V=2)
    g_reset = g.copy()
    g_reset[:, :, 2, 1] = -np.inf
    g_reset[:, :, 5] = -np.inf

    def forward(q, k, v, initial_state):
        return module.forward(q, k, v, g_reset, initial_state=initial_state, **options)

    def backward(do, dS_T, cache):
        dq, dk, dv, _, dS0 = module.backward(do, dS_T, cache)
        return dq, dk, dv, dS0

    gradcheck(forward, backward, dict(q=q, k=k, v=v, initial_state=S0))
    g_huge = g.copy()
    g_huge[:, :, 2, 1] = -2000.0
    g_huge[:, :, 5, 0] = -30.0
    gradcheck(lambda **a: module.forward(**a, **options), module.backward,
              dict(q=q, k=k, v=v, g=g_huge, initial_state=S0))


@pytest.mark.parametrize("T, value", [(40, float(np.finfo(np.float32).min)), (100, -6e36)],
                         ids=["T40-most-negative", "T100-minus-6e36"])
@pytest.mark.parametrize("form", ["parallel", "chunk"])
def test_cumulative_sums_cannot_overflow(form, T, value):
    """Every gate at -3.4e38, or at -6e36 for 100 steps (the issue's report): the sums would
    overflow float32 to -inf (and -inf - -inf = nan); T * floor does not."""
    q, k, v, g, S0, do, dS_T = make(5, T=T, dtype=np.float32)
    g[:] = value
    out = run(form, q, k, v, g, S0, do, dS_T)
    assert all(np.isfinite(x).all() for x in out)
    # every step forgets everything: o_t = s (q_t . k_t) v_t, S_T = k_T v_T^T
    s = q.shape[-1] ** -0.5
    want_o = s * np.sum(q * k, axis=-1, keepdims=True) * v
    assert rel(out[0], want_o) < 1e-5
    assert rel(out[1], k[:, :, -1, :, None] * v[:, :, -1, None, :]) < 1e-6


def test_step_accepts_a_hard_reset():
    q, k, v, g, S0, _, _ = make(6, T=1)
    g[:] = -np.inf
    o_t, S = rec.step(q[:, :, 0], k[:, :, 0], v[:, :, 0], g[:, :, 0], S0)
    np.testing.assert_array_equal(S, k[:, :, 0, :, None] * v[:, :, 0, None, :])


def test_the_floor_is_below_the_underflow_point_and_exp_of_it_is_zero():
    for dtype, floor in LOG_GATE_FLOOR.items():
        tiny = np.finfo(dtype).smallest_subnormal
        assert np.exp(dtype.type(floor)) == 0
        assert floor < np.log(float(tiny)) - np.log(2) - 20  # a margin for the cumsum's rounding
        assert np.exp(dtype.type(np.log(float(tiny)))) > 0  # the underflow point is real
