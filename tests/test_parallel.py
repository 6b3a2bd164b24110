"""The parallel form: attention with a decay mask equals the recurrence, forward and backward."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gla_np import gate_identity, parallel, recurrent
from gla_np.gradcheck import gradcheck

SHAPES = [(1, 1, 1, 1, 1), (2, 5, 1, 3, 2), (2, 7, 2, 3, 4)]  # (B, T, H, K, V)


def shape_id(shape):
    return "B{}-T{}-H{}-K{}-V{}".format(*shape)


def make_inputs(rng, B, T, H, K, V, gate=None):
    """float64 inputs; gate None draws -uniform(0.05, 2), a number fills g with it."""
    q, k = rng.standard_normal((2, B, H, T, K))
    v = rng.standard_normal((B, H, T, V))
    g = -rng.uniform(0.05, 2.0, (B, H, T, K)) if gate is None else np.full((B, H, T, K), gate)
    S0 = rng.standard_normal((B, H, K, V))
    return q, k, v, g, S0


def rel_err(got, want):
    return np.abs(got - want).max() / max(np.abs(want).max(), np.finfo(want.dtype).tiny)


@pytest.mark.parametrize("with_dS_T", [True, False], ids=["dS_T", "no-dS_T"])
@pytest.mark.parametrize("with_S0", [True, False], ids=["S0", "no-S0"])
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_gradients_match_finite_differences(shape, with_S0, with_dS_T):
    B, T, H, K, V = shape
    rng = np.random.default_rng(0)
    q, k, v, g, S0 = make_inputs(rng, *shape)
    inputs = dict(q=q, k=k, v=v, g=g)
    if with_S0:
        inputs["initial_state"] = S0
    douts = [rng.standard_normal((B, H, T, V)),
             rng.standard_normal((B, H, K, V)) if with_dS_T else None]
    gradcheck(lambda **a: parallel.forward(**a), parallel.backward, inputs, douts=douts)


def run_both(module, q, k, v, g, S0, do, dS_T, scale=0.6):
    o, S_T, cache = module.forward(q, k, v, g, initial_state=S0, scale=scale)
    return (o, S_T, *module.backward(do, dS_T, cache))


NAMES = ["o", "final_state", "dq", "dk", "dv", "dg", "d_initial_state"]


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-10), (np.float32, 1e-4)],
                         ids=["f64", "f32"])
@pytest.mark.parametrize("gate", [None, 0.0, -30.0], ids=["random-gates", "g=0", "g=-30"])
@pytest.mark.parametrize("with_S0, with_dS_T", [(True, True), (False, False), (True, False)],
                         ids=["S0-dS_T", "no-S0-no-dS_T", "S0-no-dS_T"])
def test_agrees_with_recurrent(dtype, rtol, gate, with_S0, with_dS_T):
    rng = np.random.default_rng(1)
    B, T, H, K, V = 2, 9, 2, 3, 4
    q, k, v, g, S0 = (x.astype(dtype) for x in make_inputs(rng, B, T, H, K, V, gate))
    S0 = S0 if with_S0 else None
    do = rng.standard_normal((B, H, T, V)).astype(dtype)
    dS_T = rng.standard_normal((B, H, K, V)).astype(dtype) if with_dS_T else None
    got = run_both(parallel, q, k, v, g, S0, do, dS_T)
    want = run_both(recurrent, q, k, v, g, S0, do, dS_T)
    for name, a, b in zip(NAMES, got, want):
        if b is None:
            assert a is None, name
            continue
        assert a.dtype == dtype, name
        assert rel_err(a, b) <= rtol, f"{name}: rel err {rel_err(a, b):.2e}"


def test_strong_gates_do_not_overflow_in_float32():
    """Masking after exp would compute exp(G_t - G_u) for u > t: exp(+270) = inf in float32,
    and inf * 0 = nan. Masking the exponent first keeps every exp argument <= 0."""
    rng = np.random.default_rng(2)
    q, k, v, g, S0 = (x.astype(np.float32) for x in make_inputs(rng, 1, 10, 1, 2, 2, -30.0))
    with np.errstate(over="raise", invalid="raise"):
        o, S_T, cache = parallel.forward(q, k, v, g, initial_state=S0)
        grads = parallel.backward(np.ones_like(o), np.ones_like(S_T), cache)
    assert all(np.isfinite(x).all() for x in (o, S_T, *grads))
    with np.errstate(over="ignore", invalid="ignore"):  # the wrong order, for contrast
        G = np.cumsum(g, axis=2)
        D = G[:, :, :, None, :] - G[:, :, None, :, :]
        wrong = np.exp(D) * np.tril(np.ones((10, 10)))[:, :, None]
    assert np.isnan(wrong).any()


def test_causal_decay_is_masked_and_at_most_one():
    G = np.cumsum(-np.random.default_rng(3).uniform(0, 3, (1, 1, 6, 2)), axis=2)
    W = parallel.causal_decay(G)
    assert W.shape == (1, 1, 6, 6, 2)
    t, u = np.triu_indices(6, k=1)
    assert not W[0, 0, t, u].any()  # u > t: exactly zero
    assert (W <= 1).all() and np.allclose(np.diagonal(W[0, 0], axis1=0, axis2=1), 1.0)


def test_refuses_a_decay_tensor_over_the_size_limit_naming_T():
    T = 16385  # T * T > 2**28 with B = H = K = 1; the inputs themselves are tiny
    q = np.zeros((1, 1, T, 1))
    with pytest.raises(ValueError, match=r"^T: .*T=16385"):
        parallel.forward(q, q, q, q)


def test_none_upstream_and_no_initial_state():
    q, k, v, g, _ = make_inputs(np.random.default_rng(4), 1, 4, 2, 3, 2)
    o, S_T, cache = parallel.forward(q, k, v, g)
    dq, dk, dv, dg, dS0 = parallel.backward(None, None, cache)
    assert dS0 is None and not (dq.any() or dk.any() or dv.any() or dg.any())


@given(B=st.integers(1, 2), T=st.integers(1, 9), H=st.integers(1, 2), K=st.integers(1, 4),
       V=st.integers(1, 4), strength=st.sampled_from([0.0, 0.01, 0.5, 3.0, 30.0]),
       with_S0=st.booleans(), with_dS_T=st.booleans(), seed=st.integers(0, 2**16))
def test_agrees_with_recurrent_on_drawn_shapes_and_gate_strengths(B, T, H, K, V, strength,
                                                                  with_S0, with_dS_T, seed):
    rng = np.random.default_rng(seed)
    q, k, v, _, S0 = make_inputs(rng, B, T, H, K, V)
    g = -strength * rng.uniform(0.5, 1.5, (B, H, T, K))
    S0 = S0 if with_S0 else None
    do = rng.standard_normal((B, H, T, V))
    dS_T = rng.standard_normal((B, H, K, V)) if with_dS_T else None
    got = run_both(parallel, q, k, v, g, S0, do, dS_T, scale=None)
    want = run_both(recurrent, q, k, v, g, S0, do, dS_T, scale=None)
    for name, a, b in zip(NAMES, got, want):
        if b is None:
            assert a is None, name
        elif np.abs(b).max() > 0:
            assert rel_err(a, b) <= 1e-10, f"{name}: rel err {rel_err(a, b):.2e}"
        else:
            assert not a.any(), name


def test_dg_is_the_gate_identity_in_float64():
    # parallel.backward leaves out the terms that hold no gate; in exact arithmetic that is the
    # gate identity (gla_np.gate_identity) with its final-state term
    rng = np.random.default_rng(21)
    q, k, v, g, S0 = make_inputs(rng, 2, 6, 2, 3, 2)
    do, dS_T = rng.standard_normal(v.shape), rng.standard_normal(S0.shape)
    o, S_T, cache = parallel.forward(q, k, v, g, initial_state=S0)
    dq, dk, dv, dg, dS0 = parallel.backward(do, dS_T, cache)
    plain = gate_identity.gate_grad_from_identity(q, dq, k, dk, S_T, dS_T)
    assert rel_err(dg, plain) < 1e-12
