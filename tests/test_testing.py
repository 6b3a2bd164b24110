"""gla_np.testing: the reference, the error model, the strategies.

The error model must pass correct float32 kernels (gla_np's chunked form in fla's layout with
chunks of 16 to 64, and an independent loop with the gate identity for dg) across the drawn
inputs, and fail each planted bug (tests/planted_kernels.py). The largest |error| / bound seen
on correct kernels is kept in WORST and printed at the end of the module (``-s``).
"""

import sys

import numpy as np
import pytest
from hypothesis import given, settings

import planted_kernels as pk
from conftest import SWEEP_MAX_T
from gla_np import testing
from gla_np.recurrence import chunked, parallel, recurrent
from gla_np.testing import NAMES, Reference, assert_all_close, assert_close, reference

ARGS = ("q", "k", "v", "g", "initial_state", "do", "d_final_state")
WORST = {}  # correct kernel's name -> (worst |error| / bound, q's shape, gate strength)
SWEPT = []  # T of every example the float32 sweep drew


def draw_free_inputs(seed=0, B=2, T=9, H=3, K=4, V=2, dtype=np.float32, gate=1.0):
    rng = np.random.default_rng(seed)
    q, k = rng.standard_normal((2, B, T, H, K))
    v, do = rng.standard_normal((2, B, T, H, V))
    g = -gate * rng.uniform(0, 1, (B, T, H, K))
    S0, dS_T = rng.standard_normal((2, B, H, K, V))
    return [x.astype(dtype) for x in (q, k, v, g, S0, do, dS_T)]


# --- the reference ----------------------------------------------------------------------

def test_reference_is_float64_recurrent_in_the_callers_layout():
    q, k, v, g, S0, do, dS_T = draw_free_inputs()
    ref = reference(q, k, v, g, initial_state=S0, do=do, d_final_state=dS_T, layout="BTHK")
    hm = [np.swapaxes(x, 1, 2).astype(np.float64) for x in (q, k, v, g, do)]
    o, S_T, cache = recurrent.forward(*hm[:4], initial_state=S0.astype(np.float64))
    grads = recurrent.backward(hm[4], dS_T.astype(np.float64), cache)
    want = [np.swapaxes(o, 1, 2), S_T, *(np.swapaxes(x, 1, 2) for x in grads[:4]), grads[4]]
    assert isinstance(ref, Reference)
    for name, w in zip(NAMES, want):
        got = getattr(ref, name)
        assert got.dtype == np.float64 and got.shape == w.shape, name
        np.testing.assert_array_equal(got, w)


@pytest.mark.parametrize("form", ["parallel", "chunk"])
def test_every_form_gives_the_same_reference(form):
    q, k, v, g, S0, do, dS_T = draw_free_inputs(1, dtype=np.float64)
    a = reference(q, k, v, g, initial_state=S0, do=do, d_final_state=dS_T, layout="BTHK")
    b = reference(q, k, v, g, initial_state=S0, do=do, d_final_state=dS_T, layout="BTHK",
                  form=form)
    for name in NAMES:
        np.testing.assert_allclose(getattr(b, name), getattr(a, name), rtol=1e-10, atol=1e-12)


def test_float16_inputs_are_read_exactly_and_answered_in_float64():
    q, k, v, g, S0, do, dS_T = draw_free_inputs(11, dtype=np.float16)
    ref = reference(q, k, v, g, initial_state=S0, do=do, layout="BTHK")
    want = reference(*(x.astype(np.float64) for x in (q, k, v, g)),
                     initial_state=S0.astype(np.float64), do=do.astype(np.float64),
                     layout="BTHK")
    assert ref.o.dtype == np.float64
    np.testing.assert_array_equal(ref.dg, want.dg)


def test_no_upstream_gradient_means_no_gradients():
    q, k, v, g, S0, _, _ = draw_free_inputs(2)
    ref = reference(q, k, v, g, initial_state=S0, layout="BTHK")
    assert ref.o.shape == (2, 9, 3, 2) and ref.final_state.shape == (2, 3, 4, 2)
    assert all(getattr(ref, n) is None for n in ("dq", "dk", "dv", "dg", "d_initial_state"))


def test_magnitude_bounds_the_value_and_survives_cancellation():
    """o_t = 0 exactly when the values cancel (v alternating, no decay): the magnitude is the
    size of what cancelled, not 0, so a float32 kernel's rounding there still passes."""
    T = 6
    q = np.ones((1, 1, T, 1))
    v = np.ones((1, 1, T, 1)) * (-1.0) ** np.arange(T)[None, None, :, None]
    ref = reference(q, q, v, np.zeros_like(q), do=np.ones_like(v))
    assert np.abs(ref.o[0, 0, 1::2]).max() == 0  # cancels exactly
    np.testing.assert_array_equal(ref.magnitude.o[0, 0, :, 0], np.arange(1, T + 1))
    for name in NAMES:
        value, mag = getattr(ref, name), getattr(ref.magnitude, name)
        if value is not None:
            assert (mag >= np.abs(value) * (1 - 1e-12)).all(), name
    assert_close("o", ref.o + 1e-7, ref, dtype="float32")  # rounding-sized: passes


def test_reference_takes_hard_resets_and_refuses_nan():
    q, k, v, g, S0, do, dS_T = draw_free_inputs(3)
    g[:, 4] = -np.inf
    ref = reference(q, k, v, g, initial_state=S0, do=do, layout="BTHK")
    assert np.isfinite(ref.o).all() and (ref.dg[:, 4] == 0).all()
    g[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"^g: contains nan"):
        reference(q, k, v, g, layout="BTHK")


def test_reference_names_the_layout_the_shapes_look_like():
    q, k, v, g, S0, *_ = draw_free_inputs(4)  # (B, T, H, K) = (2, 9, 3, 4)
    with pytest.raises(ValueError, match=r"^initial_state: .*look like the \(B, T, H, K\)"):
        reference(q, k, v, g, initial_state=S0)  # layout BHTK by default


@pytest.mark.parametrize("bad, pattern", [
    (dict(q=[[1.0]]), r"^q: expected a NumPy array of floats"),
    (dict(v="x"), r"^v: expected a NumPy array of floats"),
    (dict(k=np.zeros((2, 9, 3, 4), dtype=int)), r"^k: expected a NumPy array of floats"),
    (dict(layout="THBK"), r"^layout: expected one of"),
    (dict(form="fast"), r"^form: expected one of"),
    (dict(chunk_size=0), r"^chunk_size: expected a positive integer"),
    (dict(do=np.zeros((2, 3, 9, 2), np.float32)), r"^do: expected shape \(2, 9, 3, 2\)"),
])
def test_reference_refuses_bad_arguments_by_name(bad, pattern):
    q, k, v, g, *_ = draw_free_inputs(5)
    args = {**dict(q=q, k=k, v=v, g=g, layout="BTHK"), **bad}
    with pytest.raises(ValueError, match=pattern):
        reference(args.pop("q"), args.pop("k"), args.pop("v"), args.pop("g"), **args)


# --- packed variable-length batches (fla's cu_seqlens) ------------------------------------

@pytest.mark.parametrize("form", ["recurrent", "chunk"])
def test_packed_sequences_equal_separate_runs(form):
    rng = np.random.default_rng(6)
    cu = np.array([0, 3, 10, 11, 20])
    T, H, K, V, N = 20, 2, 3, 2, 4
    q, k, g = rng.standard_normal((3, 1, T, H, K))
    g = -np.abs(g)
    v, do = rng.standard_normal((2, 1, T, H, V))
    S0, dS_T = rng.standard_normal((2, N, H, K, V))
    ref = reference(q, k, v, g, initial_state=S0, do=do, d_final_state=dS_T, layout="BTHK",
                    form=form, cu_seqlens=cu, chunk_size=4)
    assert ref.final_state.shape == (N, H, K, V) and ref.d_initial_state.shape == (N, H, K, V)
    for n in range(N):
        seg = slice(cu[n], cu[n + 1])
        one = reference(q[:, seg], k[:, seg], v[:, seg], g[:, seg], initial_state=S0[n:n + 1],
                        do=do[:, seg], d_final_state=dS_T[n:n + 1], layout="BTHK",
                        chunk_size=4)
        for name in ("o", "dq", "dk", "dv", "dg"):
            np.testing.assert_allclose(getattr(ref, name)[:, seg], getattr(one, name),
                                       rtol=1e-12, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(ref.final_state[n], one.final_state[0], rtol=1e-12)
        np.testing.assert_allclose(ref.d_initial_state[n], one.d_initial_state[0], rtol=1e-12)
        # the magnitudes restart at each boundary too (dg's reverse cumsum included)
        np.testing.assert_allclose(ref.magnitude.dg[:, seg], one.magnitude.dg, rtol=1e-12)


@pytest.mark.parametrize("cu, extra, pattern", [
    ([0, 5, 5, 9], {}, r"^cu_seqlens: expected offsets rising strictly from 0 to T=9"),
    ([1, 9], {}, r"^cu_seqlens: expected offsets rising strictly"),
    ([0, 4, 8], {}, r"^cu_seqlens: expected offsets rising strictly from 0 to T=9"),
    ([0, 4, 9], dict(B=2), r"^cu_seqlens: expected a batch of 1"),
    ([0, 4, 9], dict(S0=3), r"^initial_state: expected one state per sequence, \(2, H, K, V\)"),
    ("0 4 9", {}, r"^cu_seqlens: expected a 1-D integer sequence"),
    ([0.0, 4.0, 9.0], {}, r"^cu_seqlens: expected a 1-D integer sequence"),
])
def test_packed_sequences_refuse_bad_offsets(cu, extra, pattern):
    q, k, v, g, *_ = draw_free_inputs(7, B=extra.get("B", 1), dtype=np.float64)
    S0 = np.zeros((extra["S0"], 3, 4, 2)) if "S0" in extra else None
    with pytest.raises(ValueError, match=pattern):
        reference(q, k, v, g, initial_state=S0, layout="BTHK", cu_seqlens=cu)


# --- the error model ---------------------------------------------------------------------

def test_tolerance_grows_with_the_log_gate_span_and_has_bf16_defaults():
    rtol0, _ = testing.tolerance("float32")
    rtol1, _ = testing.tolerance(np.float32, 1000.0)
    assert rtol0 == 128 * 2.0 ** -24 and rtol1 == rtol0 + 16000 * 2.0 ** -24
    bf16, _ = testing.tolerance("bfloat16", 10.0)
    assert bf16 == 8 * 2.0 ** -8 + 160 * 2.0 ** -24  # stored in bf16, summed in float32
    with pytest.raises(ValueError, match=r"^dtype: expected one of"):
        testing.tolerance("int8")
    with pytest.raises(ValueError, match=r"^log_gate_span: expected a number >= 0"):
        testing.tolerance("float32", -1.0)


def test_log_gate_span_is_per_chunk_and_counts_resets_as_128():
    g = -np.ones((1, 1, 10, 2))
    g[0, 0, 9, 0] = -np.inf
    assert testing.log_gate_span(g, 4) == 129.0  # chunks [0:4], [4:8], [8:10]: 1 + 128
    g[0, 0, 8, 0] = -np.inf
    assert testing.log_gate_span(g, 4) == 256.0
    assert testing.log_gate_span(-np.ones((1, 1, 10, 2)), 100) == 10.0


def test_failure_names_the_worst_entry_its_index_both_values_and_the_bound():
    q, k, v, g, S0, do, dS_T = draw_free_inputs(8)
    ref = reference(q, k, v, g, initial_state=S0, do=do, d_final_state=dS_T, layout="BTHK")
    dk = ref.dk.astype(np.float32)
    dk[1, 4, 2, 3] += 0.5
    dk[0, 0, 0, 0] += 1e-3
    with pytest.raises(AssertionError) as info:
        assert_close("dk", dk, ref, dtype="float32")
    msg = str(info.value)
    assert msg.startswith("dk: 2 of 216 entries exceed the error bound; worst at index "
                          "(1, 4, 2, 3): got ")
    assert f"reference {float(ref.dk[1, 4, 2, 3])!r}" in msg and "> bound" in msg
    assert info.value.ratio > 1e3 and info.value.index == (1, 4, 2, 3)  # the ratio on failure
    assert f"{info.value.ratio:.3g} times the bound" in msg and info.value.failed == 2
    bad = dk.copy()
    bad[0, 1, 0, 0] = np.nan
    with pytest.raises(AssertionError, match=r"^dk: 3 of 216 entries exceed the error bound; "
                                             r"worst at index \(0, 1, 0, 0\): got nan"):
        assert_close("dk", bad, ref, dtype="float32")
    with pytest.raises(AssertionError, match=r"^dk: shape \(9, 3, 4\)"):
        assert_close("dk", dk[0], ref, dtype="float32")


def test_plain_arrays_need_a_magnitude_and_unknown_names_are_refused():
    with pytest.raises(ValueError, match=r"^magnitude: with a plain array"):
        assert_close("o", np.zeros(3), np.zeros(3), dtype="float32")
    assert assert_close("o", np.ones(3), np.ones(3) + 1e-9, dtype="float32",
                        magnitude=np.ones(3), log_gate_span=0.0) < 1
    with pytest.raises(ValueError, match=r"^name: expected one of"):
        assert_close("S_T", np.zeros(3), np.zeros(3), dtype="float32")


def run_kernel(kernel, ex):
    return kernel(*(getattr(ex, n) for n in ARGS), np.float32(ex.scale))


def check_kernel(kernel, ex):
    ref = reference(*(getattr(ex, n) for n in ARGS[:4]), initial_state=ex.initial_state,
                    do=ex.do, d_final_state=ex.d_final_state, layout="BTHK", scale=ex.scale,
                    chunk_size=kernel.chunk_size)
    got = run_kernel(kernel, ex)
    worst, key = 0.0, kernel.__name__
    for name, x in got.items():
        ratio = assert_close(name, x, ref, dtype="float32", dg_identity=kernel.dg_identity)
        if key in CORRECT_NAMES and ratio > WORST.get(key, (-1.0,))[0]:
            WORST[key] = (ratio, name, ex.q.shape, ex.gate_strength)
        worst = max(worst, ratio)
    return worst


INDEPENDENT = {C: pk.as_kernel(*pk.chunked_kernel(C)) for C in (16, 64)}
CORRECT_NAMES = {k.__name__ for k in pk.CORRECT} | {k.__name__ for k in INDEPENDENT.values()}


@given(testing.gla_examples(dtype=np.float32, layout="BTHK", max_T=SWEEP_MAX_T, resets=True))
def test_correct_float32_kernels_pass_across_the_strategies(ex):
    """No false alarm: T up to 70 here, up to 4,096 over 2,000 examples in the slow profile
    (HYPOTHESIS_PROFILE=slow, docs/testing-your-kernel.md)."""
    SWEPT.append(ex.q.shape[1])
    check_kernel(pk.stable_recurrent, ex)
    C = 16 if ex.q.shape[1] % 2 else 64  # (B, T, H, K): odd T chunks by 16, even T by 64
    check_kernel(pk.gla_np_chunked(C), ex)
    check_kernel(INDEPENDENT[C], ex)  # the same chunks, so the same reference


@settings(max_examples=min(settings().max_examples, 50))
@given(testing.gla_examples(dtype=np.float64, layout="BHTK", max_T=SWEEP_MAX_T, resets=True))
def test_gla_np_forms_in_float64_pass_across_the_strategies(ex):
    """float64 kernels against the float64 reference: the reference's own steps count."""
    args = dict(scale=ex.scale, initial_state=ex.initial_state)
    for module, C, options in [(recurrent, 1, {}), (chunked, 32, dict(chunk_size=32))]:
        o, S_T, cache = module.forward(ex.q, ex.k, ex.v, ex.g, **args, **options)
        grads = module.backward(ex.do, ex.d_final_state, cache)
        ref = reference(ex.q, ex.k, ex.v, ex.g, initial_state=ex.initial_state, do=ex.do,
                        d_final_state=ex.d_final_state, scale=ex.scale, chunk_size=C)
        assert_all_close([o, S_T, *grads], ref, dtype="float64") <= 1


def test_the_parallel_form_in_float32_passes_with_its_whole_sequence_span():
    """A kernel that takes one cumulative sum over the whole sequence declares chunk_size=T."""
    q, k, v, g, S0, do, dS_T = (np.swapaxes(x, 1, 2) if x.ndim == 4 and i != 4 and i != 6
                                else x for i, x in enumerate(draw_free_inputs(9, gate=30.0)))
    o, S_T, cache = parallel.forward(q, k, v, g, initial_state=S0)
    grads = parallel.backward(do, dS_T, cache)
    ref = reference(q, k, v, g, initial_state=S0, do=do, d_final_state=dS_T, chunk_size=9)
    assert ref.log_gate_span > 100
    assert assert_all_close([o, S_T, *grads], ref, dtype="float32") < 1


# --- the planted bugs: each must fail -----------------------------------------------------

def caught(kernel, ex):
    try:
        check_kernel(kernel, ex)
    except AssertionError:
        return True
    return False


@pytest.mark.parametrize("kernel", pk.PLANTED, ids=lambda k: k.__name__)
def test_every_planted_bug_is_found_by_the_strategies(kernel):
    from hypothesis import find
    found = find(testing.gla_examples(dtype=np.float32, layout="BTHK"),
                 lambda ex: caught(kernel, ex), settings=settings(max_examples=300, database=None,
                                                                  derandomize=True))
    assert caught(kernel, found)


def test_an_rms_check_misses_the_decay_after_the_write_and_assert_close_does_not():
    """fla's check, RMS error / RMS reference < 0.005, passes the bug at g = -1e-3 per step."""
    q, k, v, g, S0, do, dS_T = draw_free_inputs(10, T=37, gate=2e-3)
    ref = reference(q, k, v, g, initial_state=S0, do=do, layout="BTHK")
    o = pk.decay_after_write(q, k, v, g, S0, do, None, np.float32(0.5))["o"]
    rms = np.sqrt(np.mean((o - ref.o) ** 2)) / np.sqrt(np.mean(ref.o ** 2))
    assert rms < 0.005
    with pytest.raises(AssertionError, match=r"^o: \d+ of \d+ entries exceed the error bound"):
        assert_close("o", o, ref, dtype="float32")


def test_strategies_say_clearly_when_hypothesis_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "hypothesis.strategies", None)
    with pytest.raises(ImportError, match=r"needs hypothesis .*a test-only dependency"):
        testing.gla_examples()


@pytest.fixture(scope="module", autouse=True)
def report_worst_ratio():
    yield
    if SWEPT:
        print(f"\nfloat32 sweep: {len(SWEPT)} examples, T up to {max(SWEPT)}, "
              f"{sum(t > 1024 for t in SWEPT)} with T > 1024")
    for kernel, (worst, name, shape, strength) in sorted(WORST.items()):
        print(f"\nworst |error| / bound, correct float32 kernel {kernel}: {worst:.3f} on "
              f"{name} (q {shape}, gate strength {strength})")
