"""Divergence: a loss, gradient or weight that is not finite stops the run at once, naming the
step and the quantity (never an internal variable such as ``x``), keeps the last good
checkpoint, and suggests a lower learning rate. Exit status 1, one line."""

import re

import numpy as np
import pytest

from gla_np import checkpoint, lm, optim
from gla_np.training import train

TINY = ["--seq_len", "16", "--num_pairs", "2", "--vocab_size", "16", "--batch_size", "8",
        "--hidden", "8", "--layers", "1", "--heads", "2", "--head_dim", "4", "--warmup", "2",
        "--eval_batches", "2", "--threads", "1", "--steps", "8", "--save_every", "2",
        "--lr", "0.003"]
INTERNAL = re.compile(r"\b(x|E|dout|dy|q|k|v|g)\b\s*:|'(x|E|dout)'")


def _at_step(monkeypatch, step, change):
    """From the update number ``step`` (counted from 0) on, pass the step's result through
    ``change``."""
    real = lm.loss_and_grads
    count = []

    def loss_and_grads(params, ids, targets, config, **kwargs):
        count.append(1)
        if len(count) - 1 >= step:
            return change(real, params, ids, targets, config, **kwargs)
        return real(params, ids, targets, config, **kwargs)

    monkeypatch.setattr(lm, "loss_and_grads", loss_and_grads)


def _diverges(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        train.main(TINY + ["--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert exc.value.code == 1 and err.count("\n") == 1, err
    assert not INTERNAL.search(err), err
    path = tmp_path / "checkpoint.npz"
    assert err.startswith("python -m gla_np.train: diverged at step 5 of 8: ")
    assert err.endswith(f"; the last good checkpoint {path} (step 4) is kept. Try a lower "
                        f"learning rate in a new run, say --lr 0.0003 (this run: 0.003; "
                        f"--overwrite replaces it)\n")
    ck = checkpoint.load(path)
    assert ck.step == 4 and all(np.isfinite(p).all() for p in ck.params.values())
    return err


def test_nan_loss(tmp_path, capsys, monkeypatch):
    def nan_loss(real, *args, **kwargs):
        loss, grads, logits = real(*args, **kwargs)
        return float("nan"), grads, logits

    _at_step(monkeypatch, 4, nan_loss)
    assert ("step 5 of 8: the loss is nan: the activations overflowed to nan or inf inside the "
            "model (largest weight: " in _diverges(tmp_path, capsys))


def test_inf_gradient_names_the_parameter(tmp_path, capsys, monkeypatch):
    def inf_grad(real, *args, **kwargs):
        loss, grads, logits = real(*args, **kwargs)
        return loss, {**grads, "head.weight": grads["head.weight"] * np.inf}, logits

    _at_step(monkeypatch, 4, inf_grad)
    err = _diverges(tmp_path, capsys)
    assert "the gradient norm is inf (first non-finite: the gradient of 'head.weight')" in err


def test_update_that_makes_a_weight_non_finite(tmp_path, capsys, monkeypatch):
    real = optim.AdamW.step

    def step(self, params, grads, state, lr):
        new_params, new_state = real(self, params, grads, state, lr)
        if int(new_state["step"]) == 5:
            new_params = {**new_params, "embedding.weight": new_params["embedding.weight"] / 0}
        return new_params, new_state

    monkeypatch.setattr(optim.AdamW, "step", step)
    with np.errstate(divide="ignore", invalid="ignore"):
        err = _diverges(tmp_path, capsys)
    assert "the update made the weight 'embedding.weight' nan or inf" in err


def test_overflow_inside_the_model_is_not_reported_by_internal_names(tmp_path, capsys,
                                                                    monkeypatch):
    """Regression: weights grown to 1e19 overflow the activations; a layer's own input check
    then stopped the run with "x: contains nan or inf", naming a variable of the code. (Inside
    a step the layers no longer scan their inputs; the nan reaches the loss.)"""
    def huge_weights(real, params, *args, **kwargs):
        grown = {name: (p * np.float32(1e19)).astype(p.dtype) for name, p in params.items()}
        return real(grown, *args, **kwargs)

    _at_step(monkeypatch, 4, huge_weights)
    err = _diverges(tmp_path, capsys)
    assert "the activations overflowed to nan or inf inside the model" in err
