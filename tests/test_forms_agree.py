"""The three forms compute one function: parallel and chunked agree with recurrent.

Hypothesis draws the shapes, chunk sizes and tile sizes (dividing T or not, 1, larger than T),
gate strengths from exactly 0 (no decay) down to -30 per step, hard resets (-inf or -1e30 at
about one entry in 20) or none, with and without an initial
state and a final-state gradient, and compares the outputs and all five gradients. The largest
disagreement seen per dtype is kept in LARGEST and printed at the end of the module (``-s``).
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gla_np import chunked, parallel, recurrent

NAMES = ["o", "S_T", "dq", "dk", "dv", "dg", "dS0"]
TOLERANCE = {np.float64: 1e-10, np.float32: 1e-4}
# After a hard reset the floored cumulative sums sit near -128 (k resets: -128 k), and later
# gates are added to that in float32, each addition rounded at ulp(128 k) instead of at the
# gate's own size: up to 1.8e-4 measured over 500 drawn examples in the parallel and chunked
# forms (docs/derivations/recurrence/recurrent.md, "Hard resets and huge gates").
RESET_TOLERANCE = {np.float64: 1e-10, np.float32: 5e-4}
LARGEST = {}  # (dtype name, form) -> (error, tensor name, example), the worst seen


def disagreement(x, ref):
    """max |x - ref| relative to the largest magnitude in ref (absolute if ref is all zero)."""
    x, ref = np.asarray(x, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    scale = np.abs(ref).max()
    err = np.abs(x - ref).max()
    return float(err / scale) if scale > 0 else float(err)


@st.composite
def examples(draw, min_width=1):
    B, H = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    T = draw(st.integers(1, 40))
    K, V = draw(st.integers(min_width, 5)), draw(st.integers(min_width, 5))
    divisors = [d for d in range(1, T + 1) if T % d == 0]  # (a filter would rarely hit for prime T)
    chunk = draw(st.one_of(st.sampled_from([1, T, T + 3]),  # 1, whole sequence, longer than T
                           st.sampled_from(divisors),  # divides T
                           st.integers(1, T + 2)))  # anything
    sub = draw(st.one_of(st.none(), st.integers(1, chunk + 2)))
    strength = draw(st.sampled_from([0.0, 1e-3, 0.1, 1.0, 5.0, 30.0]))  # per-step |g| scale
    return dict(B=B, H=H, T=T, K=K, V=V, chunk=chunk, sub=sub, strength=strength,
                constant=draw(st.booleans()),  # every entry at -strength, or U(0, 1) * -strength
                resets=draw(st.sampled_from([None, None, -np.inf, -1e30])),  # hard resets
                initial_state=draw(st.booleans()), final_grad=draw(st.booleans()),
                seed=draw(st.integers(0, 2 ** 16)))


def make(ex, dtype):
    rng = np.random.default_rng(ex["seed"])
    B, H, T, K, V = (ex[n] for n in "BHTKV")
    q, k = rng.standard_normal((2, B, H, T, K))
    v, do = rng.standard_normal((2, B, H, T, V))
    u = np.ones((B, H, T, K)) if ex["constant"] else rng.uniform(0, 1, (B, H, T, K))
    g = -ex["strength"] * u  # exactly 0 when strength is 0
    if ex["resets"] is not None:  # about one entry in 20 forgets everything (decay exactly 0)
        g = np.where(rng.uniform(0, 1, g.shape) < 0.05, ex["resets"], g)
    S0 = rng.standard_normal((B, H, K, V)) if ex["initial_state"] else None
    dS_T = rng.standard_normal((B, H, K, V)) if ex["final_grad"] else None
    cast = [None if x is None else x.astype(dtype) for x in (q, k, v, g, S0, do, dS_T)]
    return cast


def run(module, arrays, **kwargs):
    q, k, v, g, S0, do, dS_T = arrays
    o, S_T, cache = module.forward(q, k, v, g, initial_state=S0, **kwargs)
    return [o, S_T, *module.backward(do, dS_T, cache)]


def check_forms_agree(ex, dtype):
    arrays = make(ex, dtype)
    ref = run(recurrent, arrays)
    forms = {"parallel": run(parallel, arrays),
             "chunk": run(chunked, arrays, chunk_size=ex["chunk"], sub_chunk_size=ex["sub"])}
    for form, got in forms.items():
        for name, x, r in zip(NAMES, got, ref):
            if r is None:
                assert x is None, f"{form} {name}: expected None (no initial state)"
                continue
            assert x.dtype == dtype and x.shape == r.shape, f"{form} {name}"
            assert np.isfinite(x).all(), f"{form} {name} not finite"
            err = disagreement(x, r)
            tol = (TOLERANCE if ex["resets"] is None else RESET_TOLERANCE)[dtype]
            key = (np.dtype(dtype).name, form, "no resets" if ex["resets"] is None else "resets")
            if err > LARGEST.get(key, (-1.0,))[0]:
                LARGEST[key] = (err, name, ex, tol)
            assert err < tol, f"{form} {name}: {err:.3e} for {ex}"


@given(examples())
def test_forms_agree_float64(ex):
    check_forms_agree(ex, np.float64)


# float32 draws K, V >= 2: with a single entry (T = K = V = 1) the max-relative measure is a
# plain relative error, and one cancelling sum (a S_0 + k v near 0) makes it as large as it likes
# in float32 whatever the form (seen once in ~3000 examples). Wider tensors keep the measure honest.
@given(examples(min_width=2))
def test_forms_agree_float32(ex):
    check_forms_agree(ex, np.float32)


@pytest.fixture(scope="module", autouse=True)
def report_largest_disagreement():
    yield
    for (dtype, form, resets), (err, name, ex, tol) in sorted(LARGEST.items()):
        print(f"\nlargest disagreement with recurrent, {form} {dtype} {resets}: {err:.3e} on "
              f"{name} (tolerance {tol:.0e}) at {ex}")
