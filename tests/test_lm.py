"""The token model: a float64 gradient check of everything from the embedding to the loss."""

import numpy as np
import pytest

from gla_np import cross_entropy, gradcheck, lm, tasks
from gla_np.layers.model import GLAConfig
from lm_helpers import perturbed_params


def _config(gate="vector", form="chunk", **kw):
    base = dict(embed_dim=6, hidden_size=6, num_layers=2, num_heads=2, head_dim=3,
                expand_factor=2, dropout=0.0, gate=gate, gate_rank=2, form=form, chunk_size=4,
                dtype="float64")
    base.update(kw)
    return GLAConfig(**base)


def _problem(config, seed=0, B=2, T=9, vocab=7):
    rng = np.random.default_rng(seed)
    params = perturbed_params(config, vocab, rng)
    ids = rng.integers(0, vocab, size=(B, T))
    targets = np.where(rng.random((B, T)) < 0.5, rng.integers(0, vocab, size=(B, T)),
                       tasks.IGNORE)
    return params, ids, targets


@pytest.mark.parametrize("gate, form, conv", [
    ("vector", "chunk", False), ("vector", "recurrent", True), ("scalar", "parallel", False),
    ("fixed", "chunk", False), ("none", "chunk", True)],
    ids=["vector-chunk", "vector-recurrent-conv", "scalar-parallel", "fixed-chunk", "none-conv"])
def test_loss_gradcheck(gate, form, conv):
    config = _config(gate, form, use_short_conv=conv)
    params, ids, targets = _problem(config)
    names = list(params)

    def fwd(**p):
        loss, _ = cross_entropy.forward(lm.forward(p, ids, config)[0], targets)
        return loss, None

    _, grads, _ = lm.loss_and_grads(params, ids, targets, config)
    assert list(grads) == names  # same keys, same order as params
    gradcheck(fwd, lambda dloss, _: {n: float(dloss) * grads[n] for n in names}, params,
              douts=[np.array(1.3)], sample=6, rtol=1e-6)


def test_backward_gradcheck_with_random_upstream():
    config = _config()
    params, ids, _ = _problem(config, seed=1)
    gradcheck(lambda **p: lm.forward(p, ids, config), lm.backward, params, sample=5, rtol=1e-6)


def test_float32_keeps_dtype_and_matches_float64():
    c64, c32 = _config(), _config(dtype="float32")
    params, ids, targets = _problem(c64, seed=2)
    p32 = {k: v.astype(np.float32) for k, v in params.items()}
    loss64, grads64, _ = lm.loss_and_grads(params, ids, targets, c64)
    loss32, grads32, logits32 = lm.loss_and_grads(p32, ids, targets, c32)
    assert logits32.dtype == np.float32 and all(g.dtype == np.float32 for g in grads32.values())
    assert loss32 == pytest.approx(loss64, rel=1e-5)
    np.testing.assert_allclose(grads32["head.weight"], grads64["head.weight"], atol=1e-5)


def test_short_conv_kernels_start_uniform():
    config = _config(use_short_conv=True, hidden_size=32, embed_dim=32, num_heads=2, head_dim=16)
    params = lm.init_params(config, 11, np.random.default_rng(0))
    kernels = [v for k, v in params.items() if ".conv_" in k]
    assert len(kernels) == 3 * config.num_layers
    w = np.concatenate([k.ravel() for k in kernels])  # W = 4: U(-1/2, 1/2), std 1/sqrt(12)
    assert np.abs(w).max() <= 0.5 and w.std() == pytest.approx(12 ** -0.5, rel=0.1)
    assert params["blocks.0.attn.W_q"].std() == pytest.approx(0.02, rel=0.2)  # the rest: fla's


def test_init_and_validation():
    config = _config()
    params = lm.init_params(config, 11, np.random.default_rng(0))
    assert params["embedding.weight"].shape == (11, 6) and params["head.weight"].shape == (6, 11)
    assert not any(k.startswith(("embedding", "head")) for k in params
                   if k not in ("embedding.weight", "head.weight"))
    with pytest.raises(ValueError, match="embed_dim"):
        lm.init_params(_config(embed_dim=5), 11, np.random.default_rng(0))
    with pytest.raises(ValueError, match="vocab_size"):
        lm.init_params(config, 0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="ids"):
        lm.forward(params, np.zeros(5, dtype=np.int64), config)
    with pytest.raises(ValueError, match="ids"):
        lm.forward(params, np.full((1, 5), 11), config)  # out of the vocabulary
    with pytest.raises(ValueError, match="head.weight"):
        lm.forward({k: v for k, v in params.items() if k != "head.weight"},
                   np.zeros((1, 5), dtype=np.int64), config)


def test_tied_embeddings_gradcheck():
    # the head is E^T: E's gradient is the lookup's plus the head's (a missing term fails here)
    config = _config(tie_word_embeddings=True, head_dim=2, value_head_dim=3)
    params, ids, targets = _problem(config, seed=3)
    assert "head.weight" not in params and params["embedding.weight"].shape == (7, 6)
    gradcheck(lambda **p: lm.forward(p, ids, config), lm.backward, params, sample=4, rtol=1e-6)
    _, grads, _ = lm.loss_and_grads(params, ids, targets, config)
    assert list(grads) == list(params)


def test_tied_embeddings_equal_an_untied_head_set_to_E_transposed():
    tied = _config(tie_word_embeddings=True)
    params, ids, _ = _problem(tied, seed=4)
    untied = {**params, "head.weight": params["embedding.weight"].T.copy()}
    logits_t, cache_t = lm.forward(params, ids, tied)
    logits_u, cache_u = lm.forward(untied, ids, _config())
    np.testing.assert_array_equal(logits_t, logits_u)
    dlogits = np.random.default_rng(5).standard_normal(logits_t.shape)
    g_t, g_u = lm.backward(dlogits, cache_t), lm.backward(dlogits, cache_u)
    np.testing.assert_allclose(g_t["embedding.weight"],
                               g_u["embedding.weight"] + g_u["head.weight"].T, rtol=1e-13)
    with pytest.raises(ValueError, match="unexpected entry 'head.weight'"):
        lm.forward(untied, ids, tied)


@pytest.mark.parametrize("norm", ["rmsnorm", "layernorm"])
def test_forget_gates_are_the_gates_the_first_layer_computes(norm):
    from gla_np import gate, rmsnorm, layernorm
    config = _config(norm=norm)
    params, ids, _ = _problem(config, seed=6)
    params = {k: v + 0.1 for k, v in params.items()}  # norm weights and biases away from 1 and 0
    gates = lm.forget_gates(params, ids, config)
    assert len(gates) == 2 and all(g.shape == (2, 9, 2, 3) and (g <= 0).all() for g in gates)
    x = params["embedding.weight"][ids]
    p = {k[len("blocks.0.attn."):]: v for k, v in params.items() if k.startswith("blocks.0.attn.")}
    if norm == "rmsnorm":
        xn, _ = rmsnorm.forward(x, p["norm.w"], config.norm_eps)
    else:
        xn, _ = layernorm.forward(x, p["norm.w"], p["norm.b"], config.norm_eps)
    g, _ = gate.forward({k[5:]: v for k, v in p.items() if k.startswith("gate.")}, xn,
                        kind="vector", num_heads=2, head_dim=3, normalizer=16)
    np.testing.assert_array_equal(gates[0], g)


def test_loss_and_grads_scans_each_parameter_once_by_its_full_name():
    config = _config()
    params, ids, targets = _problem(config, seed=3)
    bad = dict(params, **{"blocks.1.ffn.W_down": np.full_like(params["blocks.1.ffn.W_down"],
                                                               np.nan)})
    with pytest.raises(ValueError, match=r"^params\['blocks.1.ffn.W_down'\]: contains nan"):
        lm.loss_and_grads(bad, ids, targets, config)
    with pytest.raises(ValueError, match="^params: expected a dict"):
        lm.loss_and_grads(list(params.values()), ids, targets, config)


def test_inside_the_step_activations_are_not_scanned_again(monkeypatch):
    # Count the whole-array scans (scalars aside): one per parameter, none for the activations.
    config = _config()
    params, ids, targets = _problem(config, seed=4)
    scans = []
    real_isfinite = np.isfinite
    monkeypatch.setattr(np, "isfinite", lambda x, *a, **k: (scans.append(np.shape(x)),
                                                            real_isfinite(x, *a, **k))[1])
    lm.loss_and_grads(params, ids, targets, config)
    assert sorted(s for s in scans if s) == sorted(p.shape for p in params.values())
    # and outside the step the layers scan again: a nan activation is named where it enters
    from gla_np import linear
    with pytest.raises(ValueError, match="^x: contains nan"):
        linear.forward(np.full((2, 6), np.nan), params["head.weight"])


def test_a_nan_made_inside_the_step_reaches_the_loss():
    # Weights so large that the float32 activations overflow: no error from inside, a nan loss
    # (the training command stops on it and names the step).
    config = _config(dtype="float32")
    params, ids, targets = _problem(config, seed=5)
    params = {n: p.astype(np.float32) for n, p in params.items()}
    params["blocks.0.ffn.W_up"] = np.full_like(params["blocks.0.ffn.W_up"], 3e38)
    with np.errstate(over="ignore", invalid="ignore"):
        loss, _, _ = lm.loss_and_grads(params, ids, targets, config)
    assert not np.isfinite(loss)
