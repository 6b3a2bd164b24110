"""The GLA layer: gradients of every parameter and the input, for every gate and norm, and
dropout with a fixed generator; dtypes and bad input."""

import numpy as np
import pytest

from gla_np import gla_layer, gradcheck
from gla_np.layers.model import GLAConfig


def _config(**kw):
    opts = dict(embed_dim=4, hidden_size=4, num_heads=2, head_dim=3, gate_rank=2, dropout=0.0,
                chunk_size=2, gate_normalizer=2)  # tau = 2: gate gradients well above noise
    opts.update(kw)
    return GLAConfig(**opts)


def _params(config, rng):
    params = gla_layer.init_params(config, rng)
    return {n: p + 0.3 * rng.standard_normal(p.shape).astype(p.dtype) for n, p in params.items()}


def _check(config, seed=0, dropout_seed=None):
    rng = np.random.default_rng(seed)
    params = _params(config, rng)
    x = rng.standard_normal((2, 5, config.hidden_size))

    def f(x, **p):
        drop_rng = None if dropout_seed is None else np.random.default_rng(dropout_seed)
        return gla_layer.forward(p, x, config, training=dropout_seed is not None, rng=drop_rng)

    def b(dy, cache):
        dx, grads = gla_layer.backward(dy, cache)
        assert set(grads) == set(params)
        return {"x": dx, **grads}

    return gradcheck(f, b, {"x": x, **params})


@pytest.mark.parametrize("gate", ["vector", "scalar", "fixed", "none"])
def test_gradcheck_each_gate(gate):
    _check(_config(gate=gate))


@pytest.mark.parametrize("form", ["recurrent", "parallel"])
def test_gradcheck_other_forms_and_layernorm(form):
    _check(_config(form=form, norm="layernorm", chunk_size=64), seed=1)


def test_gradcheck_with_dropout():
    report = _check(_config(dropout=0.3), seed=2, dropout_seed=7)
    assert report.ok


@pytest.mark.parametrize("conv", [False, True], ids=["no-conv", "conv"])
@pytest.mark.parametrize("form", ["chunk", "recurrent", "parallel"])
def test_gradcheck_key_and_value_sizes_differ(form, conv):
    # K = 2 for q, k and the gate; V = 3 for v, the output gate and the output norm
    _check(_config(head_dim=2, value_head_dim=3, form=form, use_short_conv=conv,
                   chunk_size=2 if form == "chunk" else 64), seed=4)


def test_value_head_size_shapes():
    config = _config(head_dim=2, value_head_dim=5, use_short_conv=True)
    shapes = gla_layer.param_shapes(config)
    assert shapes["W_q"] == shapes["W_k"] == (4, 4) and shapes["gate.W2"] == (2, 4)
    assert shapes["W_v"] == shapes["W_r"] == (4, 10) and shapes["W_o"] == (10, 4)
    assert shapes["conv_v"] == (4, 10) and shapes["conv_k"] == (4, 4)
    assert shapes["o_norm.w"] == (5,)
    params = gla_layer.init_params(config, np.random.default_rng(0))
    assert {n: p.shape for n, p in params.items()} == shapes
    assert gla_layer.init_state(config, 3).S.shape == (3, 2, 2, 5)


@pytest.mark.parametrize("norm_eps, o_norm_eps, used", [(1e-6, None, 1e-6), (0.25, None, 0.25),
                                                        (1e-6, 1e-5, 1e-5)],
                         ids=["default", "model-eps", "own-eps"])
def test_output_norm_uses_the_model_eps(norm_eps, o_norm_eps, used):
    config = _config(norm_eps=norm_eps, o_norm_eps=o_norm_eps)
    rng = np.random.default_rng(5)
    x = 0.01 * rng.standard_normal((2, 5, 4))  # small outputs: the eps matters
    _, cache = gla_layer.forward(_params(config, rng), x, config)
    c = cache.out.o_norm
    o = c.x_hat / c.rstd  # the norm's input, recovered from what it stored
    np.testing.assert_allclose(c.rstd, 1 / np.sqrt((o * o).mean(-1, keepdims=True) + used),
                               rtol=1e-12)


def test_param_names_and_output_norm_shared_by_heads():
    params = gla_layer.init_params(_config(), np.random.default_rng(0))
    assert set(params) == {"norm.w", "W_q", "W_k", "W_v", "gate.W1", "gate.W2", "gate.b2",
                           "W_r", "o_norm.w", "W_o"}
    assert params["o_norm.w"].shape == (3,)  # one weight of size V, shared by the 2 heads


def test_float32_keeps_dtype():
    config = _config(dtype="float32")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 5, 4)).astype(np.float32)
    y, cache = gla_layer.forward(gla_layer.init_params(config, rng), x, config)
    dx, grads = gla_layer.backward(np.ones_like(y), cache)
    assert y.dtype == dx.dtype == np.float32
    assert all(g.dtype == np.float32 for g in grads.values())


@pytest.mark.parametrize("x, match", [
    (np.zeros((5, 4)), "x: expected 3 dimensions"),
    (np.zeros((2, 5, 3)), r"x: expected shape \(B, T, 4\)"),
    (np.full((2, 5, 4), np.nan), "x: contains nan"),
    (np.zeros((2, 5, 4), dtype=np.float32), "x: expected dtype float64"),
], ids=["rank", "width", "nan", "dtype"])
def test_bad_input_is_refused(x, match):
    config = _config()
    params = gla_layer.init_params(config, np.random.default_rng(0))
    with pytest.raises(ValueError, match=match):
        gla_layer.forward(params, x, config)


def test_none_upstream_means_zero():
    config = _config(use_short_conv=True)
    rng = np.random.default_rng(4)
    params = _params(config, rng)
    x = rng.standard_normal((2, 5, 4))
    _, cache = gla_layer.forward(params, x, config)
    dx, grads = gla_layer.backward(None, cache)
    assert dx.shape == x.shape and dx.dtype == x.dtype and not dx.any()
    assert set(grads) == set(params)
    assert all(grads[n].shape == p.shape and not grads[n].any() for n, p in params.items())


def test_upstream_of_another_dtype_is_refused():
    config = _config()
    params = gla_layer.init_params(config, np.random.default_rng(0))
    y, cache = gla_layer.forward(params, np.ones((1, 3, 4)), config)
    with pytest.raises(ValueError, match="dout: expected dtype float64"):
        gla_layer.backward(np.ones_like(y, dtype=np.float32), cache)
    with pytest.raises(ValueError, match=r"dout: expected shape \(1, 3, 4\)"):
        gla_layer.backward(np.ones((1, 3, 5)), cache)


@pytest.mark.parametrize("name, bad, match", [
    ("W_q", None, "params: missing 'W_q'"),
    ("W_q", np.zeros((4, 5)), r"params\['W_q'\]: expected shape \(4, 6\)"),
    ("gate.W2", np.zeros((2, 6), dtype=np.float32), r"params\['gate.W2'\]: .* dtype float64"),
    ("W_o", np.full((6, 4), np.nan), r"params\['W_o'\]: contains nan"),
], ids=["missing", "shape", "dtype", "nan"])
def test_bad_params_are_refused_by_name(name, bad, match):
    config = _config()
    params = gla_layer.init_params(config, np.random.default_rng(0))
    if bad is None:
        del params[name]
    else:
        params[name] = bad
    with pytest.raises(ValueError, match=match):
        gla_layer.forward(params, np.zeros((1, 3, 4)), config)


def test_param_shapes_match_init():
    for kw in ({}, {"gate": "scalar", "norm": "layernorm"}, {"use_short_conv": True}):
        config = _config(**kw)
        params = gla_layer.init_params(config, np.random.default_rng(0))
        assert {n: p.shape for n, p in params.items()} == gla_layer.param_shapes(config)


@pytest.mark.parametrize("rate", [0.0, 0.5], ids=["rate0", "rate0.5"])
def test_in_place_sums_write_into_no_input_and_no_cached_array(rate):
    # forward adds x into its own output array, backward sums into arrays it made: neither may
    # write into x, dout, the params or anything the cache holds
    config = _config(dropout=rate)
    rng = np.random.default_rng(8)
    params = _params(config, rng)
    x, dout = rng.standard_normal((2, 2, 5, config.hidden_size))
    x_before, dout_before = x.copy(), dout.copy()
    params_before = {n: p.copy() for n, p in params.items()}
    out, cache = gla_layer.forward(params, x, config, training=True, rng=np.random.default_rng(9))
    out_before = out.copy()
    dx, grads = gla_layer.backward(dout, cache)
    dx_again, grads_again = gla_layer.backward(dout, cache)  # the cache is still the forward's
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(dout, dout_before)
    np.testing.assert_array_equal(out, out_before)
    for n, p in params.items():
        np.testing.assert_array_equal(p, params_before[n])
    np.testing.assert_array_equal(dx, dx_again)
    for n in grads:
        np.testing.assert_array_equal(grads[n], grads_again[n])
    assert not np.shares_memory(dx, dout) and not np.shares_memory(out, x)
