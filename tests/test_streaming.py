"""Streaming inference: one position at a time with a carried state equals the full forward."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gla_np import model
from gla_np.layers.edifice import build
from gla_np.layers.model import GLAConfig

T = 7


def _setup(seed=0, **kw):
    config = GLAConfig(**{"embed_dim": 3, "hidden_size": 4, "num_layers": 2, "num_heads": 2,
                          "head_dim": 2, "gate_rank": 2, "dropout": 0.1, **kw})
    rng = np.random.default_rng(seed)
    params = {n: p + 0.3 * rng.standard_normal(p.shape).astype(p.dtype)
              for n, p in model.init_params(config, rng).items()}
    x = rng.standard_normal((2, T, 3)).astype(config.dtype)
    return config, params, x


def _stream(params, x, config):
    state = model.init_state(config, x.shape[0])
    ys = []
    for t in range(x.shape[1]):
        y_t, state = model.step(params, x[:, t], state, config)
        ys.append(y_t)
    return np.stack(ys, axis=1), state


@pytest.mark.parametrize("form, chunk", [("recurrent", 64), ("parallel", 64), ("chunk", 3),
                                         ("chunk", 64)], ids=["recurrent", "parallel",
                                                              "chunk-C3", "chunk-C64"])
@pytest.mark.parametrize("gate", ["vector", "scalar", "fixed", "none"])
def test_stepping_equals_forward(form, chunk, gate):
    config, params, x = _setup(form=form, chunk_size=chunk, gate=gate)
    y_full, _ = model.forward(params, x, config, return_sequence=True)
    y_stream, _ = _stream(params, x, config)
    np.testing.assert_allclose(y_stream, y_full, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("norm", ["rmsnorm", "layernorm"])
def test_stepping_with_short_conv_equals_forward(norm):
    config, params, x = _setup(seed=1, use_short_conv=True, norm=norm)
    y_full, _ = model.forward(params, x, config, return_sequence=True)
    y_stream, state = _stream(params, x, config)
    np.testing.assert_allclose(y_stream, y_full, rtol=1e-12, atol=1e-13)
    assert state[0].conv[0].shape == (2, config.conv_size - 1, 4)  # only W-1 inputs are kept


@pytest.mark.parametrize("form", ["recurrent", "chunk"])
def test_stepping_with_key_and_value_sizes_differing(form):
    config, params, x = _setup(seed=4, use_short_conv=True, head_dim=2, value_head_dim=3,
                               form=form, chunk_size=3)
    y_full, _ = model.forward(params, x, config, return_sequence=True)
    y_stream, state = _stream(params, x, config)
    np.testing.assert_allclose(y_stream, y_full, rtol=1e-12, atol=1e-13)
    assert state[0].S.shape == (2, 2, 2, 3) and state[0].conv[2].shape == (2, 3, 6)


def test_state_size_does_not_grow_and_float32_works():
    config, params, x = _setup(seed=2, dtype="float32", embed_dim=3)
    state0 = model.init_state(config, 2)
    y_stream, state = _stream(params, x, config)
    assert [s.S.shape for s in state] == [s.S.shape for s in state0] == [(2, 2, 2, 2)] * 2
    y_full, _ = model.forward(params, x, config, return_sequence=True)
    assert y_stream.dtype == np.float32
    np.testing.assert_allclose(y_stream, y_full, rtol=1e-4, atol=1e-5)


def test_holder_step_and_bad_input():
    m = build(embed_dim=3, hidden_size=4, num_layers=1, num_heads=2, head_dim=2, seed=0)
    x = np.random.default_rng(3).standard_normal((1, 4, 3))
    state = m.init_state(1)
    for t in range(4):
        y_t, state = m.step(x[:, t], state)
    np.testing.assert_allclose(y_t, m.forward(x)[0], rtol=1e-12)
    with pytest.raises(ValueError, match="x_t"):
        m.step(x, state)  # a whole sequence where one position belongs
    with pytest.raises(ValueError, match="state"):
        m.step(x[:, 0], None)
    del m.params["blocks.0.attn.W_k"]
    with pytest.raises(ValueError, match="blocks.0.attn.W_k"):
        m.step(x[:, 0], m.init_state(1))


@given(T=st.integers(1, 9), chunk=st.integers(1, 5),
       form=st.sampled_from(["recurrent", "parallel", "chunk"]),
       gate=st.sampled_from(["vector", "scalar", "fixed", "none"]),
       use_short_conv=st.booleans(), conv_size=st.integers(1, 4), seed=st.integers(0, 99))
@settings(max_examples=15)
def test_stepping_equals_forward_drawn(T, chunk, form, gate, use_short_conv, conv_size, seed):
    config, params, x = _setup(seed=seed, form=form, gate=gate, use_short_conv=use_short_conv,
                               conv_size=conv_size, chunk_size=chunk if form == "chunk" else 64)
    x = x[:, :T] if T <= x.shape[1] else np.concatenate([x, x[:, :T - x.shape[1]]], axis=1)
    y_full, _ = model.forward(params, x, config, return_sequence=True)
    y_stream, _ = _stream(params, x, config)
    np.testing.assert_allclose(y_stream, y_full, rtol=1e-11, atol=1e-12)
