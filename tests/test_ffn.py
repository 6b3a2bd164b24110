"""The SwiGLU feed-forward part: value, gradients (dropout off and on), names, dtype."""

import numpy as np
import pytest

from gla_np import ffn, gradcheck
from gla_np.model import GLAConfig


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
