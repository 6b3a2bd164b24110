"""One block: layer then feed-forward; gradients of every parameter and the input."""

import numpy as np
import pytest

from gla_np import block, ffn, gla_layer, gradcheck
from gla_np.layers.model import GLAConfig


def _config(**kw):
    return GLAConfig(**{"embed_dim": 4, "hidden_size": 4, "num_heads": 2, "head_dim": 2,
                        "gate_rank": 2, "dropout": 0.0, "chunk_size": 2, **kw})


@pytest.mark.parametrize("dropout", [0.0, 0.2], ids=["eval", "dropout"])
def test_gradcheck(dropout):
    config = _config(dropout=dropout)
    rng = np.random.default_rng(0)
    params = {n: p + 0.3 * rng.standard_normal(p.shape)
              for n, p in block.init_params(config, rng).items()}

    def f(x, **p):
        return block.forward(p, x, config, training=dropout > 0, rng=np.random.default_rng(3))

    def b(dy, cache):
        dx, grads = block.backward(dy, cache)
        return {"x": dx, **grads}

    gradcheck(f, b, {"x": rng.standard_normal((2, 5, 4)), **params})


def test_block_is_layer_then_ffn():
    config = _config()
    rng = np.random.default_rng(1)
    params = block.init_params(config, rng)
    x = rng.standard_normal((2, 5, 4))
    h, _ = gla_layer.forward({n[5:]: p for n, p in params.items() if n.startswith("attn.")},
                             x, config)
    want, _ = ffn.forward({n[4:]: p for n, p in params.items() if n.startswith("ffn.")},
                          h, config)
    got, _ = block.forward(params, x, config)
    np.testing.assert_array_equal(got, want)


def test_none_upstream_means_zero():
    config = _config()
    rng = np.random.default_rng(2)
    params = block.init_params(config, rng)
    x = rng.standard_normal((2, 5, 4))
    _, cache = block.forward(params, x, config)
    dx, grads = block.backward(None, cache)
    assert dx.shape == x.shape and not dx.any()
    assert set(grads) == set(params) and not any(g.any() for g in grads.values())
    with pytest.raises(ValueError, match="dout: expected dtype float64"):
        block.backward(np.ones((2, 5, 4), dtype=np.float32), cache)


@pytest.mark.parametrize("name, bad, match", [
    ("attn.W_q", None, "params: missing 'attn.W_q'"),
    ("attn.W_q", np.zeros((4, 3)), r"params\['attn.W_q'\]: expected shape \(4, 4\)"),
    ("ffn.W_gate", None, "params: missing 'ffn.W_gate'"),
], ids=["missing-attn", "shape", "missing-ffn"])
def test_bad_params_are_refused_by_name(name, bad, match):
    config = _config()
    params = block.init_params(config, np.random.default_rng(0))
    if bad is None:
        del params[name]
    else:
        params[name] = bad
    with pytest.raises(ValueError, match=match):
        block.forward(params, np.zeros((1, 3, 4)), config)
