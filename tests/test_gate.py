"""The forget gate's four kinds: values, shapes, and gradients against finite differences."""

import numpy as np
import pytest

from gla_np import gate, gradcheck

B, T, D, H, K, R = 2, 3, 4, 2, 3, 2


def _params(kind, rng):
    params = gate.init_params(kind, D, H, K, R, np.float64, rng)
    return {n: p + 0.5 * rng.standard_normal(p.shape) for n, p in params.items()}


def _forward(kind, tau=16.0):
    def f(x, **params):
        return gate.forward(params, x, kind=kind, num_heads=H, head_dim=K, normalizer=tau)
    return f


def _backward(dg, cache):
    dx, grads = gate.backward(dg, cache)
    return {"x": dx, **grads}


@pytest.mark.parametrize("kind", ["vector", "scalar"])
def test_learned_gates_gradcheck(kind):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, T, D))
    # tau = 2 keeps the gradients well above the checker's noise floor
    gradcheck(_forward(kind, tau=2.0), _backward, {"x": x, **_params(kind, rng)})


@pytest.mark.parametrize("kind", gate.GATES)
def test_shapes_signs_and_param_names(kind):
    rng = np.random.default_rng(1)
    params = _params(kind, rng)
    x = rng.standard_normal((B, T, D))
    g, cache = _forward(kind)(x, **params)
    assert g.shape == (B, T, H, K) and g.dtype == x.dtype
    assert (g <= 0).all()
    dx, grads = gate.backward(rng.standard_normal(g.shape), cache)
    assert dx.shape == x.shape and set(grads) == set(params)


@pytest.mark.parametrize("kind", ["fixed", "none"])
def test_constant_gates_have_no_params_and_no_input_gradient(kind):
    rng = np.random.default_rng(2)
    assert gate.init_params(kind, D, H, K, R, np.float64, rng) == {}
    g, cache = _forward(kind)(rng.standard_normal((B, T, D)))
    dx, grads = gate.backward(rng.standard_normal(g.shape), cache)
    assert not dx.any() and grads == {}


def test_fixed_gate_is_retnet_decay_per_head():
    g, _ = _forward("fixed")(np.zeros((1, 1, D)))
    want = np.log(1 - 2.0 ** (-5 - np.arange(H)))
    np.testing.assert_allclose(g[0, 0], np.repeat(want[:, None], K, axis=1), rtol=1e-15)
    none, _ = _forward("none")(np.ones((1, 1, D)))
    assert not none.any()


def test_vector_gate_at_init_halves_memory_every_16_tokens():
    rng = np.random.default_rng(3)
    params = gate.init_params("vector", D, H, K, R, np.float64, rng)
    params = {n: np.zeros_like(p) for n, p in params.items()}  # z = 0 exactly
    g, _ = _forward("vector")(rng.standard_normal((B, T, D)), **params)
    np.testing.assert_allclose(np.exp(16 * g), 0.5, rtol=1e-12)


def test_scalar_gate_is_shared_over_key_channels():
    rng = np.random.default_rng(4)
    g, _ = _forward("scalar")(rng.standard_normal((B, T, D)), **_params("scalar", rng))
    assert np.array_equal(g, np.broadcast_to(g[..., :1], g.shape))


def test_float32_keeps_dtype():
    rng = np.random.default_rng(5)
    params = gate.init_params("vector", D, H, K, R, np.float32, rng)
    x = rng.standard_normal((B, T, D)).astype(np.float32)
    g, cache = _forward("vector")(x, **params)
    dx, grads = gate.backward(np.ones_like(g), cache)
    assert g.dtype == dx.dtype == grads["W1"].dtype == np.float32


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="kind"):
        _forward("diagonal")(np.zeros((B, T, D)))


@pytest.mark.parametrize("kind", ["vector", "scalar", "fixed", "none"])
def test_none_upstream_means_zero_and_other_dtypes_are_refused(kind):
    rng = np.random.default_rng(7)
    params = _params(kind, rng)
    x = rng.standard_normal((B, T, D))
    g, cache = _forward(kind)(x, **params)
    dx, grads = gate.backward(None, cache)
    assert dx.shape == x.shape and not dx.any() and set(grads) == set(params)
    assert not any(d.any() for d in grads.values())
    with pytest.raises(ValueError, match="dg: expected dtype float64"):
        gate.backward(np.ones_like(g, dtype=np.float32), cache)
    with pytest.raises(ValueError, match=r"dg: expected shape \(2, 3, 2, 3\)"):
        gate.backward(np.ones((B, T, H * K)), cache)
