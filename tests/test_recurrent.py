"""The recurrent form: the definition of GLA, its hand-written BPTT and the streaming step."""

import numpy as np
import pytest

from gla_np import recurrent
from gla_np.gradcheck import gradcheck

SHAPES = [(1, 1, 1, 1, 1), (2, 5, 1, 3, 2), (2, 7, 2, 3, 4)]  # (B, T, H, K, V)


def shape_id(shape):
    return "B{}-T{}-H{}-K{}-V{}".format(*shape)


def make_inputs(rng, B, T, H, K, V, dtype=np.float64, initial_state=True):
    q = rng.standard_normal((B, H, T, K)).astype(dtype)
    k = rng.standard_normal((B, H, T, K)).astype(dtype)
    v = rng.standard_normal((B, H, T, V)).astype(dtype)
    g = -rng.uniform(0.05, 2.0, (B, H, T, K)).astype(dtype)  # strictly < 0: room for +-eps
    S0 = rng.standard_normal((B, H, K, V)).astype(dtype) if initial_state else None
    return q, k, v, g, S0


def loop_reference(q, k, v, g, S0, scale):
    """One batch row and head, written as plainly as possible: lists and one outer product."""
    S = S0.copy()
    outs = []
    for t in range(q.shape[0]):
        S = np.exp(g[t])[:, None] * S + np.outer(k[t], v[t])  # decay, write
        outs.append(scale * S.T @ q[t])  # read
    return np.array(outs), S


@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_forward_matches_a_plain_loop(shape):
    B, T, H, K, V = shape
    q, k, v, g, S0 = make_inputs(np.random.default_rng(1), *shape)
    o, S_T, _ = recurrent.forward(q, k, v, g, initial_state=S0, scale=0.7)
    for b in range(B):
        for h in range(H):
            o_ref, S_ref = loop_reference(q[b, h], k[b, h], v[b, h], g[b, h], S0[b, h], 0.7)
            np.testing.assert_allclose(o[b, h], o_ref, rtol=1e-13, atol=1e-13)
            np.testing.assert_allclose(S_T[b, h], S_ref, rtol=1e-13, atol=1e-13)


def test_default_scale_is_inverse_sqrt_K_and_default_state_is_zero():
    q, k, v, g, _ = make_inputs(np.random.default_rng(2), 1, 4, 1, 4, 2)
    o, S_T, cache = recurrent.forward(q, k, v, g)
    o_ref, S_ref = loop_reference(q[0, 0], k[0, 0], v[0, 0], g[0, 0], np.zeros((4, 2)), 0.5)
    np.testing.assert_allclose(o[0, 0], o_ref, rtol=1e-13)
    np.testing.assert_allclose(S_T[0, 0], S_ref, rtol=1e-13)
    assert cache.scale == 0.5 and not cache.has_initial_state


@pytest.mark.parametrize("with_dS_T", [True, False], ids=["dS_T", "no-dS_T"])
@pytest.mark.parametrize("with_S0", [True, False], ids=["S0", "no-S0"])
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_gradients_match_finite_differences(shape, with_S0, with_dS_T):
    B, T, H, K, V = shape
    rng = np.random.default_rng(3)
    q, k, v, g, S0 = make_inputs(rng, *shape, initial_state=with_S0)
    inputs = dict(q=q, k=k, v=v, g=g)
    if with_S0:
        inputs["initial_state"] = S0
    douts = [rng.standard_normal((B, H, T, V)),
             rng.standard_normal((B, H, K, V)) if with_dS_T else None]
    gradcheck(lambda **a: recurrent.forward(**a), recurrent.backward, inputs, douts=douts)


def test_no_initial_state_gives_no_initial_state_gradient():
    q, k, v, g, _ = make_inputs(np.random.default_rng(4), 1, 3, 1, 2, 2)
    o, S_T, cache = recurrent.forward(q, k, v, g)
    grads = recurrent.backward(np.ones_like(o), None, cache)
    assert len(grads) == 5 and grads[4] is None


def test_none_upstream_gradients_mean_zero():
    q, k, v, g, S0 = make_inputs(np.random.default_rng(5), 2, 4, 2, 3, 2)
    o, S_T, cache = recurrent.forward(q, k, v, g, initial_state=S0)
    for grad in recurrent.backward(None, None, cache):
        assert grad.shape in {q.shape, v.shape, S0.shape} and not grad.any()


def test_float32_keeps_dtype_and_agrees_with_float64():
    shape = (2, 6, 2, 3, 4)
    q, k, v, g, S0 = make_inputs(np.random.default_rng(6), *shape)
    rng = np.random.default_rng(7)
    do, dS_T = rng.standard_normal((2, 2, 6, 4)), rng.standard_normal((2, 2, 3, 4))
    o64, S64, c64 = recurrent.forward(q, k, v, g, initial_state=S0)
    g64 = recurrent.backward(do, dS_T, c64)
    args32 = [x.astype(np.float32) for x in (q, k, v, g)]
    o32, S32, c32 = recurrent.forward(*args32, initial_state=S0.astype(np.float32))
    g32 = recurrent.backward(do.astype(np.float32), dS_T.astype(np.float32), c32)
    for got, want in zip((o32, S32, *g32), (o64, S64, *g64)):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_step_reproduces_forward(dtype):
    q, k, v, g, S0 = make_inputs(np.random.default_rng(8), 2, 6, 3, 4, 2, dtype=dtype)
    o, S_T, _ = recurrent.forward(q, k, v, g, initial_state=S0)
    state = S0
    for t in range(q.shape[2]):
        o_t, state = recurrent.step(q[:, :, t], k[:, :, t], v[:, :, t], g[:, :, t], state)
        assert o_t.dtype == dtype and state.dtype == dtype
        np.testing.assert_array_equal(o_t, o[:, :, t])  # the same lines, so bit-identical
    np.testing.assert_array_equal(state, S_T)


def test_step_from_no_state_equals_step_from_zeros():
    q, k, v, g, _ = make_inputs(np.random.default_rng(9), 1, 1, 2, 3, 2)
    first = recurrent.step(q[:, :, 0], k[:, :, 0], v[:, :, 0], g[:, :, 0], None, scale=0.3)
    zeros = recurrent.step(q[:, :, 0], k[:, :, 0], v[:, :, 0], g[:, :, 0],
                           np.zeros((1, 2, 3, 2)), scale=0.3)
    for a, b in zip(first, zeros):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad, name", [
    (dict(q_t=np.zeros((1, 2, 4))), "k_t"),  # wrong K
    (dict(v_t=np.zeros((1, 2))), "v_t"),  # wrong rank
    (dict(g_t=np.full((1, 2, 3), 0.1)), "g_t"),  # positive gate
    (dict(state=np.zeros((1, 2, 3, 3))), "state"),  # wrong V
    (dict(q_t=np.full((1, 2, 3), np.nan)), "q_t"),  # not finite
    (dict(scale=0.0), "scale"),
], ids=["K-mismatch", "v-rank", "positive-gate", "state-shape", "nan", "scale"])
def test_step_rejects_bad_input_naming_the_argument(bad, name):
    args = dict(q_t=np.zeros((1, 2, 3)), k_t=np.zeros((1, 2, 3)), v_t=np.zeros((1, 2, 2)),
                g_t=np.zeros((1, 2, 3)), state=None, scale=None)
    args.update(bad)
    scale = args.pop("scale")
    with pytest.raises(ValueError, match=f"^{name}:"):
        recurrent.step(*args.values(), scale=scale)


def test_backward_rejects_a_misshapen_upstream_gradient():
    q, k, v, g, _ = make_inputs(np.random.default_rng(10), 1, 3, 1, 2, 2)
    o, S_T, cache = recurrent.forward(q, k, v, g)
    with pytest.raises(ValueError, match="^do:"):
        recurrent.backward(o[:, :, :2], None, cache)
    with pytest.raises(ValueError, match="^d_final_state:"):
        recurrent.backward(o, S_T[..., :1], cache)


STEP_MESSAGES = {
    "empty-q_t": (dict(q_t=np.zeros((1, 0, 3))),
                  r"^q_t: expected shape \(B, H, K\) with every size >= 1"),
    "empty-v_t": (dict(v_t=np.zeros((1, 2, 0))), r"^v_t: expected shape \(B, H, V\) with V >= 1"),
    "dtype-mix": (dict(g_t=np.zeros((1, 2, 3), np.float32)), r"one dtype .*g_t: float32"),
    "state-rank": (dict(state=np.zeros((2, 3, 2))), r"^state: expected 4 dimensions"),
}


@pytest.mark.parametrize("bad, pattern", STEP_MESSAGES.values(), ids=STEP_MESSAGES.keys())
def test_step_messages_use_the_step_names_and_shapes(bad, pattern):
    # step and forward share one implementation of the checks; the messages must still speak
    # of q_t and (B, H, K), not of q and (B, H, T, K)
    args = dict(q_t=np.zeros((1, 2, 3)), k_t=np.zeros((1, 2, 3)), v_t=np.zeros((1, 2, 2)),
                g_t=np.zeros((1, 2, 3)), state=None)
    args.update(bad)
    with pytest.raises(ValueError, match=pattern):
        recurrent.step(*args.values())


def test_forward_messages_use_the_sequence_names_and_shapes():
    q = np.zeros((1, 2, 4, 3))
    with pytest.raises(ValueError, match=r"^q: expected shape \(B, H, T, K\) with every size"):
        recurrent.forward(q[:, :, :0], q[:, :, :0], q[:, :, :0], q[:, :, :0])
    with pytest.raises(ValueError, match=r"^v: expected shape \(B, H, T, V\) with V >= 1"):
        recurrent.forward(q, q, q[..., :0], q)
    with pytest.raises(ValueError, match=r"^initial_state: expected shape \(1, 2, 3, 3\)"):
        recurrent.forward(q, q, q, q, initial_state=np.zeros((1, 2, 3, 2)))
