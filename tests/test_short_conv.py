"""The short causal depthwise convolution: definition, causality, streaming, gradients; and the
GLA layer with the convolution switched on."""

import numpy as np
import pytest

from gla_np import gla_layer, gradcheck, short_conv
from gla_np.layers.model import GLAConfig

B, T, C, W = 2, 5, 3, 4


def _backward(dy, cache):
    return short_conv.backward(dy, cache)


def test_matches_a_direct_loop():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((B, T, C)), rng.standard_normal((W, C))
    y, _ = short_conv.forward(x, w)
    want = np.zeros_like(x)
    for t in range(T):
        for j in range(W):
            src = t - (W - 1) + j  # tap j looks W-1-j positions back
            if src >= 0:
                want[:, t] += w[j] * x[:, src]
    np.testing.assert_allclose(y, want, rtol=1e-13, atol=1e-15)


def test_is_causal():
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((B, T, C)), rng.standard_normal((W, C))
    y, _ = short_conv.forward(x, w)
    x2 = x.copy()
    x2[:, 3] += 1.0
    y2, _ = short_conv.forward(x2, w)
    assert np.array_equal(y[:, :3], y2[:, :3]) and not np.allclose(y[:, 3], y2[:, 3])


@pytest.mark.parametrize("with_prefix", [False, True], ids=["zeros", "prefix"])
def test_gradcheck(with_prefix):
    rng = np.random.default_rng(2)
    inputs = {"x": rng.standard_normal((B, T, C)), "w": rng.standard_normal((W, C))}
    if with_prefix:
        inputs["prefix"] = rng.standard_normal((B, W - 1, C))
    gradcheck(short_conv.forward, _backward, inputs)


def test_pieces_with_carried_prefix_equal_the_whole():
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((B, T, C)), rng.standard_normal((W, C))
    whole, _ = short_conv.forward(x, w)
    first, cache = short_conv.forward(x[:, :2], w)  # shorter than the kernel
    rest, _ = short_conv.forward(x[:, 2:], w, short_conv.new_prefix(cache))
    np.testing.assert_allclose(np.concatenate([first, rest], axis=1), whole, rtol=1e-14)


def test_bad_kernel_width_is_refused():
    with pytest.raises(ValueError, match="w"):
        short_conv.forward(np.zeros((B, T, C)), np.zeros((W, C + 1)))


def test_layer_with_short_conv_gradcheck():
    config = GLAConfig(embed_dim=4, hidden_size=4, num_heads=2, head_dim=2, gate_rank=2,
                       dropout=0.0, use_short_conv=True, form="recurrent")
    rng = np.random.default_rng(4)
    params = {n: p + 0.3 * rng.standard_normal(p.shape)
              for n, p in gla_layer.init_params(config, rng).items()}
    assert {"conv_q", "conv_k", "conv_v"} <= set(params)

    def f(x, **p):
        return gla_layer.forward(p, x, config)

    def b(dy, cache):
        dx, grads = gla_layer.backward(dy, cache)
        return {"x": dx, **grads}

    gradcheck(f, b, {"x": rng.standard_normal((2, 5, 4)), **params})


def test_none_upstream_means_zero_and_other_dtypes_are_refused():
    rng = np.random.default_rng(5)
    x, w = rng.standard_normal((B, T, C)), rng.standard_normal((W, C))
    _, cache = short_conv.forward(x, w, np.zeros((B, W - 1, C)))
    dx, dw, d_prefix = short_conv.backward(None, cache)
    assert dx.shape == x.shape and not dx.any() and not dw.any() and not d_prefix.any()
    with pytest.raises(ValueError, match="dy: expected dtype float64"):
        short_conv.backward(np.ones((B, T, C), dtype=np.float32), cache)
