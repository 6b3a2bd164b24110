"""Edifice's API: build and the part builders, output_size, recommended_defaults, and an exact
param_count for every configuration."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import gla_np
from gla_np import block, gla_layer
from gla_np.layers.edifice import (GLABlock, GLALayer, GLAModel, GLAPart, build,
                            build_gated_linear_attention, build_gla_block, output_size,
                            param_count, recommended_defaults)

SMALL = dict(hidden_size=4, num_layers=1, num_heads=2, head_dim=2, gate_rank=2)


def test_exported_from_the_package():
    assert gla_np.build is build and gla_np.param_count is param_count
    assert gla_np.build_gla_block is build_gla_block and gla_np.output_size is output_size


def test_build_has_edifices_defaults():
    c = build(embed_dim=5, num_layers=1, hidden_size=8, head_dim=4, seed=0).config
    assert (c.num_heads, c.expand_factor, c.dropout, c.window_size, c.seq_len) == (4, 2, 0.1,
                                                                                  60, 60)
    assert recommended_defaults() == {"hidden_size": 256, "num_layers": 6, "num_heads": 4,
                                      "head_dim": 64, "expand_factor": 2, "window_size": 60,
                                      "dropout": 0.1}
    assert output_size() == 256 and output_size(hidden_size=32) == 32


def test_param_count_at_edifice_defaults():
    # Edifice reports 4,398,848 (weights only, its own architecture); ours counts every scalar.
    assert param_count() == param_count(embed_dim=287) == 4_453_504


def test_forward_backward_and_seeding():
    m = build(embed_dim=3, **SMALL, seed=1)
    assert isinstance(m, GLAModel)
    x = np.random.default_rng(0).standard_normal((2, 5, 3))
    y, cache = m.forward(x)
    dx, grads = m.backward(np.ones_like(y), cache)
    assert y.shape == (2, output_size(**SMALL)) and dx.shape == x.shape
    assert set(grads) == set(m.params)
    again = build(embed_dim=3, **SMALL, rng=np.random.default_rng(1))
    assert all(np.array_equal(m.params[n], again.params[n]) for n in m.params)


def test_part_builders():
    layer = build_gated_linear_attention(**SMALL, seed=0)
    blk = build_gla_block(**SMALL, seed=0)
    assert isinstance(layer, GLALayer) and isinstance(blk, GLABlock)
    x = np.random.default_rng(0).standard_normal((2, 5, 4))
    for part in (layer, blk):
        y, cache = part.forward(x)
        dx, grads = part.backward(np.ones_like(y), cache)
        assert y.shape == dx.shape == x.shape and set(grads) == set(part.params)
    assert {n for n in blk.params if n.startswith("attn.")} == {"attn." + n for n in layer.params}
    assert isinstance(layer, GLAPart) and isinstance(blk, GLAPart)  # one holder, two modules
    assert (layer.module, blk.module) == (gla_layer, block)


def test_part_step_checks_params_once_per_call():
    blk = build_gla_block(**SMALL, seed=0)
    x = np.random.default_rng(1).standard_normal((2, 3, 4))
    state = blk.init_state(2)
    for t in range(3):
        y_t, state = blk.step(x[:, t], state)
    np.testing.assert_allclose(y_t, blk.forward(x)[0][:, -1], rtol=1e-12)
    del blk.params["ffn.W_up"]
    with pytest.raises(ValueError, match="ffn.W_up"):
        blk.step(x[:, 0], blk.init_state(2))


@pytest.mark.parametrize("func", [output_size, param_count, build_gla_block,
                                  build_gated_linear_attention],
                         ids=lambda f: f.__name__)
@pytest.mark.parametrize("kwargs, match", [
    ({"hiden_size": 3}, "hiden_size: unknown option"), ({"dropout": 5}, "dropout"),
    ({"hidden_size": 0}, "hidden_size"), ({"gate": "sigmoid"}, "gate"),
    ({"seed": 1, "rng": np.random.default_rng(1)}, "rng"),
], ids=["typo", "dropout", "hidden", "gate", "seed-and-rng"])
def test_size_helpers_and_part_builders_check_options(func, kwargs, match):
    with pytest.raises(ValueError, match=match):
        func(**kwargs)


def test_size_helpers_accept_every_build_option():
    opts = dict(embed_dim=3, **SMALL, dropout=0.0, form="recurrent", norm="layernorm",
                use_short_conv=True, seed=4)
    assert output_size(**opts) == 4
    assert param_count(**opts) == sum(p.size for p in build(**opts).params.values())


@pytest.mark.parametrize("kwargs, match", [
    ({}, "embed_dim"), ({"embed_dim": 0}, "embed_dim"), ({"embed_dim": 3, "dropout": 1.5},
                                                          "dropout"),
    ({"embed_dim": 3, "form": "fast"}, "form"), ({"embed_dim": 3, "gate": "sigmoid"}, "gate"),
    ({"embed_dim": 3, "seed": 1, "rng": np.random.default_rng(1)}, "rng"),
], ids=["missing-embed", "zero-embed", "dropout", "form", "gate", "seed-and-rng"])
def test_bad_options_are_refused_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build(**kwargs)


@given(embed_dim=st.integers(1, 6), hidden_size=st.integers(1, 6),
       num_layers=st.integers(1, 3), num_heads=st.integers(1, 3), head_dim=st.integers(1, 4),
       expand_factor=st.integers(1, 3), gate_rank=st.integers(1, 3),
       gate=st.sampled_from(["vector", "scalar", "fixed", "none"]),
       norm=st.sampled_from(["rmsnorm", "layernorm"]), use_short_conv=st.booleans(),
       conv_size=st.integers(1, 4), value_head_dim=st.none() | st.integers(1, 4),
       intermediate_size=st.none() | st.integers(1, 5))
def test_param_count_is_exact(**opts):
    m = build(**opts, seed=0)
    assert param_count(**opts) == sum(p.size for p in m.params.values())


def test_value_head_size_and_ffn_width_counts():
    # one layer, D = 4, H = 2, K = 2, V = 3, F = 5, R = 2, RMSNorm, no conv, no input projection:
    # norm 4; W_q, W_k 4*4 each; W_v, W_r 4*6 each; gate 4*2 + 2*4 + 4; o_norm 3; W_o 6*4;
    # FFN norm 4, W_gate, W_up 4*5 each, W_down 5*4; final norm 4
    opts = dict(embed_dim=4, hidden_size=4, num_layers=1, num_heads=2, head_dim=2, gate_rank=2)
    layer = 4 + 2 * 16 + 2 * 24 + (8 + 8 + 4) + 3 + 24
    ffn = 4 + 3 * 20
    assert param_count(**opts, value_head_dim=3, intermediate_size=5) == layer + ffn + 4
    # the defaults are Edifice's: V = head_dim, F = hidden * expand_factor
    assert param_count(**opts) == param_count(**opts, value_head_dim=2, intermediate_size=8)


def test_token_model_option_is_refused():
    with pytest.raises(ValueError, match="tie_word_embeddings: an option of the token model"):
        param_count(embed_dim=3, tie_word_embeddings=True)
