"""The SwiGLU feed-forward part: value, gradients (dropout off and on), names, dtype."""

import numpy as np
import pytest

from gla_np import ffn, gradcheck
from gla_np.layers.model import GLAConfig


def _config(**kw):
    return GLAConfig(**{"embed_dim": 4, "hidden_size": 4, "expand_factor": 2, "dropout": 0.0,
                        **kw})


def _params(config, rng):
    params = ffn.init_params(config, rng)
    return {n: p + 0.3 * rng.standard_normal(p.shape) for n, p in params.items()}


def _backward(dy, cache):
    dz, grads = ffn.backward(dy, cache)
    return {"z": dz, **grads}


@pytest.mark.parametrize("norm", ["rmsnorm", "layernorm"])
def test_gradcheck(norm):
    config = _config(norm=norm)
    rng = np.random.default_rng(0)
    params = _params(config, rng)
    gradcheck(lambda z, **p: ffn.forward(p, z, config), _backward,
              {"z": rng.standard_normal((2, 3, 4)), **params})


def test_gradcheck_with_dropout():
    config = _config(dropout=0.5)
    rng = np.random.default_rng(1)
    params = _params(config, rng)
    z = rng.standard_normal((2, 3, 4))

    def f(z, **p):
        return ffn.forward(p, z, config, training=True, rng=np.random.default_rng(5))

    y_train, _ = f(z, **params)
    y_eval, _ = ffn.forward(params, z, config)
    assert not np.allclose(y_train, y_eval)  # the mask really drops something
    gradcheck(f, _backward, {"z": z, **params})


def test_value_is_swiglu_behind_norm_and_residual():
    config = _config()
    rng = np.random.default_rng(2)
    p = _params(config, rng)
    z = rng.standard_normal((1, 2, 4))
    zn = z / np.sqrt((z * z).mean(-1, keepdims=True) + config.norm_eps) * p["norm.w"]
    h = zn @ p["W_gate"]
    want = z + ((h / (1 + np.exp(-h))) * (zn @ p["W_up"])) @ p["W_down"]
    y, _ = ffn.forward(p, z, config)
    np.testing.assert_allclose(y, want, rtol=1e-12)
    assert p["W_up"].shape == (4, 8)  # inner size hidden * expand_factor, as Edifice


def test_none_upstream_means_zero():
    config = _config(norm="layernorm")
    rng = np.random.default_rng(3)
    params = _params(config, rng)
    z = rng.standard_normal((2, 3, 4))
    _, cache = ffn.forward(params, z, config)
    dz, grads = ffn.backward(None, cache)
    assert dz.shape == z.shape and dz.dtype == z.dtype and not dz.any()
    assert set(grads) == set(params) and not any(g.any() for g in grads.values())
    with pytest.raises(ValueError, match="dout: expected dtype float64"):
        ffn.backward(np.ones((2, 3, 4), dtype=np.float32), cache)


@pytest.mark.parametrize("name, bad, match", [
    ("W_up", None, "params: missing 'W_up'"),
    ("W_down", np.zeros((4, 8)), r"params\['W_down'\]: expected shape \(8, 4\)"),
    ("norm.w", np.zeros(4, dtype=np.float32), r"params\['norm.w'\]: .* dtype float64"),
], ids=["missing", "shape", "dtype"])
def test_bad_params_are_refused_by_name(name, bad, match):
    config = _config()
    params = ffn.init_params(config, np.random.default_rng(0))
    if bad is None:
        del params[name]
    else:
        params[name] = bad
    with pytest.raises(ValueError, match=match):
        ffn.forward(params, np.zeros((1, 2, 4)), config)


def test_step_is_forward_at_one_position():
    config = _config(norm="layernorm")
    rng = np.random.default_rng(4)
    params = _params(config, rng)
    z = rng.standard_normal((2, 3, 4))
    out, _ = ffn.forward(params, z, config)
    for t in range(3):
        np.testing.assert_allclose(ffn.step(params, z[:, t], config), out[:, t], rtol=1e-13)


@pytest.mark.parametrize("training, rate", [(False, 0.5), (True, 0.0), (True, 0.5)],
                         ids=["eval", "rate0", "train"])
def test_dropout_returns_a_new_array_which_forward_adds_the_residual_into(training, rate):
    # ffn.forward adds z into dropout's output in place: that output must never be (or share
    # memory with) dropout's input y, whose array the down projection made
    from gla_np.ops import dropout
    y = np.random.default_rng(6).standard_normal((2, 3, 4))
    yd, _ = dropout.forward(y, rate, np.random.default_rng(7), training)
    assert not np.shares_memory(yd, y)


@pytest.mark.parametrize("norm", ["rmsnorm", "layernorm"])
@pytest.mark.parametrize("rate", [0.0, 0.5], ids=["rate0", "rate0.5"])
def test_in_place_sums_write_into_no_input_and_no_cached_array(norm, rate):
    config = _config(norm=norm, dropout=rate)
    rng = np.random.default_rng(8)
    params = _params(config, rng)
    z, dout = rng.standard_normal((2, 2, 3, 4))
    z_before, dout_before = z.copy(), dout.copy()
    params_before = {n: p.copy() for n, p in params.items()}
    out, cache = ffn.forward(params, z, config, training=True, rng=np.random.default_rng(9))
    sh, u = cache.sh.copy(), cache.u.copy()
    out_before = out.copy()
    dz, grads = ffn.backward(dout, cache)
    dz_again, grads_again = ffn.backward(dout, cache)  # the cache is still the forward's
    np.testing.assert_array_equal(z, z_before)
    np.testing.assert_array_equal(dout, dout_before)
    np.testing.assert_array_equal(out, out_before)
    np.testing.assert_array_equal(cache.sh, sh)
    np.testing.assert_array_equal(cache.u, u)
    for n, p in params.items():
        np.testing.assert_array_equal(p, params_before[n])
    np.testing.assert_array_equal(dz, dz_again)
    for n in grads:
        np.testing.assert_array_equal(grads[n], grads_again[n])
    assert not np.shares_memory(dz, dout) and not np.shares_memory(out, z)
