"""Shared by the token model's tests."""

from gla_np import lm


def perturbed_params(config, vocab, rng):
    """``lm.init_params``, then every matrix moved by N(0, 0.3^2): weights bigger than the 0.02
    init, so every path carries a gradient well above rounding."""
    params = lm.init_params(config, vocab, rng)
    return {k: (v + 0.3 * rng.standard_normal(v.shape) if v.ndim == 2 else v)
            for k, v in params.items()}
