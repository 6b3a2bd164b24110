"""The token model's head at selected positions: the same logits, loss and gradients as the
head everywhere with the other positions' gradients zero (float64)."""

import numpy as np
import pytest

from gla_np import cross_entropy, lm, tasks
from gla_np.layers.model import GLAConfig
from lm_helpers import perturbed_params


def _problem(seed=0, B=3, T=7, vocab=9):
    config = GLAConfig(embed_dim=6, hidden_size=6, num_layers=1, num_heads=2, head_dim=3,
                       expand_factor=2, dropout=0.0, gate_rank=2, chunk_size=4, dtype="float64")
    rng = np.random.default_rng(seed)
    params = perturbed_params(config, vocab, rng)
    ids = rng.integers(0, vocab, size=(B, T))
    targets = np.where(rng.random((B, T)) < 0.4, rng.integers(0, vocab, size=(B, T)),
                       tasks.IGNORE)
    return config, params, ids, targets, rng


def test_positions_select_rows_of_the_full_logits_and_backward_zeros_the_rest():
    config, params, ids, _, rng = _problem()
    mask = rng.random(ids.shape) < 0.5
    full, c_full = lm.forward(params, ids, config)
    rows, c_rows = lm.forward(params, ids, config, positions=mask)
    np.testing.assert_allclose(rows, full[mask], rtol=1e-13, atol=1e-15)
    d_rows = rng.standard_normal(rows.shape)
    d_full = np.zeros_like(full)
    d_full[mask] = d_rows
    g_rows, g_full = lm.backward(d_rows, c_rows), lm.backward(d_full, c_full)
    assert list(g_rows) == list(g_full)
    for name in g_full:
        np.testing.assert_allclose(g_rows[name], g_full[name], rtol=1e-11, atol=1e-14,
                                   err_msg=name)


def test_loss_and_grads_equal_the_loss_over_every_position():
    config, params, ids, targets, _ = _problem(seed=1)
    loss, grads, logits = lm.loss_and_grads(params, ids, targets, config)
    full, cache = lm.forward(params, ids, config)
    full_loss, c_loss = cross_entropy.forward(full, targets)
    full_grads = lm.backward(cross_entropy.backward(1.0, c_loss), cache)
    assert loss == pytest.approx(float(full_loss), rel=1e-13)
    np.testing.assert_allclose(logits, full[targets != tasks.IGNORE], rtol=1e-13, atol=1e-15)
    for name in full_grads:
        np.testing.assert_allclose(grads[name], full_grads[name], rtol=1e-11, atol=1e-14,
                                   err_msg=name)


def test_bad_positions_and_targets_are_refused():
    config, params, ids, targets, _ = _problem(seed=2)
    with pytest.raises(ValueError, match="positions"):
        lm.forward(params, ids, config, positions=np.ones(ids.shape, dtype=int))
    with pytest.raises(ValueError, match="positions"):
        lm.forward(params, ids, config, positions=np.ones((1, 2), dtype=bool))
    with pytest.raises(ValueError, match="targets"):
        lm.loss_and_grads(params, ids, targets[:, :3], config)
