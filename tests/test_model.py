"""The whole model: gradients (dropout off and on), forms agree, config and input validation."""

import numpy as np
import pytest

from gla_np import gradcheck, model
from gla_np.layers.model import GLAConfig


def _config(**kw):
    return GLAConfig(**{"embed_dim": 3, "hidden_size": 4, "num_layers": 2, "num_heads": 2,
                        "head_dim": 2, "gate_rank": 2, "dropout": 0.0, "chunk_size": 3,
                        "gate_normalizer": 4, **kw})


def _params(config, seed):
    rng = np.random.default_rng(seed)
    return {n: p + 0.3 * rng.standard_normal(p.shape).astype(p.dtype)
            for n, p in model.init_params(config, rng).items()}


def _backward(dy, cache):
    dx, grads = model.backward(dy, cache)
    return {"x": dx, **grads}


@pytest.mark.parametrize("dropout, return_sequence", [(0.0, False), (0.25, True)],
                         ids=["eval-last", "dropout-sequence"])
def test_gradcheck_two_layers(dropout, return_sequence):
    config = _config(dropout=dropout)
    params = _params(config, 0)
    x = np.random.default_rng(1).standard_normal((2, 5, 3))

    def f(x, **p):  # a fresh generator from a fixed seed: the same masks in every call
        return model.forward(p, x, config, training=dropout > 0, rng=np.random.default_rng(9),
                             return_sequence=return_sequence)

    report = gradcheck(f, _backward, {"x": x, **params}, sample=6)
    assert len(report.tensors) == 1 + len(params)


def test_dropout_is_active_only_in_training():
    config = _config(dropout=0.5)
    params, x = _params(config, 2), np.random.default_rng(3).standard_normal((2, 5, 3))
    y_eval, _ = model.forward(params, x, config)
    y_a, _ = model.forward(params, x, config, training=True, rng=np.random.default_rng(4))
    y_b, _ = model.forward(params, x, config, training=True, rng=np.random.default_rng(4))
    assert np.array_equal(y_a, y_b) and not np.allclose(y_a, y_eval)
    with pytest.raises(ValueError, match="rng"):
        model.forward(params, x, config, training=True)


@pytest.mark.parametrize("T, chunk", [(7, 3), (4, 4), (5, 1)], ids=["T7-C3", "T4-C4", "T5-C1"])
def test_forms_agree_on_outputs_and_every_gradient(T, chunk):
    x = np.random.default_rng(5).standard_normal((2, T, 3))
    dy = np.random.default_rng(6).standard_normal((2, T, 4))
    results = {}
    for form in ("recurrent", "parallel", "chunk"):
        config = _config(form=form, chunk_size=chunk if form == "chunk" else 64)
        params = _params(config, 7)
        y, cache = model.forward(params, x, config, return_sequence=True)
        results[form] = (y, *model.backward(dy, cache))
    y0, dx0, g0 = results["recurrent"]
    for form in ("parallel", "chunk"):
        y, dx, g = results[form]
        np.testing.assert_allclose(y, y0, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(dx, dx0, rtol=1e-11, atol=1e-13)
        for name in g0:
            np.testing.assert_allclose(g[name], g0[name], rtol=1e-10, atol=1e-12, err_msg=name)


def test_output_shapes_names_and_float32():
    config = _config(dtype="float32", embed_dim=4)  # embed == hidden: no input projection
    params = model.init_params(config, np.random.default_rng(0))
    assert not any(n.startswith(("embedding", "head", "input_proj")) for n in params)
    assert {p.dtype for p in params.values()} == {np.dtype(np.float32)}
    x = np.random.default_rng(1).standard_normal((2, 5, 4)).astype(np.float32)
    y, cache = model.forward(params, x, config)
    dx, grads = model.backward(np.ones((2, 4), np.float32), cache)
    assert y.shape == (2, 4) and y.dtype == dx.dtype == np.float32
    assert list(grads) == list(params)


def test_init_follows_fla():
    config = _config(hidden_size=64, num_heads=2, head_dim=32)
    params = model.init_params(config, np.random.default_rng(0))
    assert abs(params["blocks.0.attn.W_q"].std() - 0.02) < 0.002
    assert not params["blocks.0.attn.gate.b2"].any() and not params["input_proj.b"].any()
    assert (params["final_norm.w"] == 1).all() and (params["blocks.1.attn.o_norm.w"] == 1).all()


def test_extra_params_are_ignored_and_missing_ones_refused():
    config = _config()
    params, x = _params(config, 0), np.zeros((1, 2, 3))
    y, cache = model.forward({**params, "embedding.E": np.zeros((5, 3))}, x, config)
    assert set(model.backward(np.ones((1, 4)), cache)[1]) == set(params)
    del params["blocks.1.ffn.W_up"]
    with pytest.raises(ValueError, match="blocks.1.ffn.W_up"):
        model.forward(params, x, config)
    params["blocks.1.ffn.W_up"] = np.zeros((4, 7))
    with pytest.raises(ValueError, match=r"params\['blocks.1.ffn.W_up'\]: expected shape"):
        model.forward(params, x, config)


@pytest.mark.parametrize("x, match", [
    (np.zeros((5, 3)), "x: expected 3 dimensions"),
    (np.zeros((2, 5, 4)), r"x: expected shape \(B, T, 3\)"),
    (np.full((2, 5, 3), np.inf), "x: contains nan or inf"),
    (np.zeros((2, 5, 3), dtype=np.float32), "x: expected dtype float64"),
    (np.zeros((2, 5, 3), dtype=np.int64), "x: expected a float32 or float64"),
], ids=["rank", "width", "inf", "dtype", "int"])
def test_bad_input_is_refused(x, match):
    config = _config()
    with pytest.raises(ValueError, match=match):
        model.forward(model.init_params(config, np.random.default_rng(0)), x, config)


def test_bad_upstream_shape_is_refused():
    config = _config()
    _, cache = model.forward(_params(config, 0), np.zeros((2, 5, 3)), config)
    with pytest.raises(ValueError, match="dy"):
        model.backward(np.zeros((2, 5, 4)), cache)


@pytest.mark.parametrize("return_sequence", [False, True], ids=["last", "sequence"])
def test_bad_upstream_is_refused(return_sequence):
    config = _config()
    _, cache = model.forward(_params(config, 0), np.zeros((2, 5, 3)), config,
                             return_sequence=return_sequence)
    shape = (2, 5, 4) if return_sequence else (2, 4)
    with pytest.raises(ValueError, match="dy: expected dtype float64"):
        model.backward(np.ones(shape, dtype=np.float32), cache)
    with pytest.raises(ValueError, match="dy: contains nan"):
        model.backward(np.full(shape, np.nan), cache)
    dx, grads = model.backward(None, cache)  # None means zero
    assert dx.shape == (2, 5, 3) and not dx.any() and not any(g.any() for g in grads.values())


def test_float32_model_refuses_float64_upstream():
    config = _config(dtype="float32")
    params = model.init_params(config, np.random.default_rng(0))
    y, cache = model.forward(params, np.zeros((1, 2, 3), np.float32), config)
    with pytest.raises(ValueError, match="dy: expected dtype float32"):
        model.backward(np.ones(y.shape), cache)


@pytest.mark.parametrize("option, value", [
    ("hidden_size", 0), ("num_layers", -1), ("num_heads", 1.5), ("head_dim", 0),
    ("expand_factor", 0), ("window_size", 0), ("seq_len", 0), ("gate_rank", 0),
    ("chunk_size", 0), ("conv_size", 0), ("dropout", 1.0), ("dropout", -0.1),
    ("form", "fused"), ("gate", "diagonal"), ("norm", "batchnorm"), ("dtype", "float16"),
    ("gate_normalizer", 0), ("norm_eps", -1e-6), ("use_short_conv", 1),
], ids=lambda v: str(v))
def test_bad_options_are_refused_by_name(option, value):
    with pytest.raises(ValueError, match=option):
        _config(**{option: value})


def test_seq_len_defaults_to_window_size_and_longer_inputs_run():
    config = _config(window_size=3)
    assert config.seq_len == 3
    y, _ = model.forward(_params(config, 0), np.zeros((1, 8, 3)), config)  # T = 8 > seq_len
    assert y.shape == (1, 4)
