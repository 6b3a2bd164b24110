"""Edifice's GLA API in NumPy: ``build``, the layer and block builders, and the size helpers.

Users of the Elixir library Edifice (``Edifice.Attention.GLA``) find the same names and options
here, with the same defaults::

    model = build(embed_dim=287)                   # hidden 256, 6 layers, 4 heads of 64 ...
    y, cache = model.forward(x)                    # x (B, T, 287) -> y (B, 256), last position
    dx, grads = model.backward(dy, cache)          # what Axon would do for you

What differs, and why (docs/edifice.md has the point-by-point comparison):

- The core is real GLA (a decaying state with a data-dependent low-rank gate, fla's layer);
  Edifice's core never decays and normalizes by a running sum of 1 + ELU features.
- Options Edifice lacks are keyword-only: the gate variant, its rank and normalizer, the form
  of the core, the norm, the short convolution, the dtype, and ``seed`` or ``rng`` for init; for
  fla's shapes, ``value_head_dim`` (default ``head_dim``), ``intermediate_size`` (default
  ``hidden_size * expand_factor``) and ``o_norm_eps`` (default ``norm_eps``).
- ``window_size`` and ``seq_len`` (default: window_size) are accepted and kept in the config,
  but inputs of ANY length are accepted. Edifice fixes the length because XLA compiles per
  shape; NumPy compiles nothing, the model has no positional parameters, and streaming with
  ``step`` runs past any length, so refusing T > seq_len would protect nothing.
- ``param_count`` is exact (it counts every scalar in ``params``, biases and norms included);
  like Edifice's, it assumes embed_dim = 287 when none is given.

The returned objects are thin holders of ``config`` and ``params`` that call the pure functions
of ``gla_np.model``, ``gla_np.block`` and ``gla_np.gla_layer``; they keep no other state.
Every function here refuses an option it does not know (ValueError naming it), as ``build`` does.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from gla_np._checks import check_bool, check_cache, check_nonnegative_int, check_positive_int
from gla_np.layers import block, gla_layer, model
from gla_np.layers._params import check_params
from gla_np.layers.model import GLAConfig

EDIFICE_DEFAULTS = {"hidden_size": 256, "num_layers": 6, "num_heads": 4, "head_dim": 64,
                    "expand_factor": 2, "window_size": 60, "dropout": 0.1}


def recommended_defaults():
    """Edifice's recommended configuration, as a fresh dict (same keys and values)."""
    return dict(EDIFICE_DEFAULTS)


TOKEN_MODEL_ONLY = ("tie_word_embeddings",)  # gla_np.lm's: these models have no embedding
OPTIONS = tuple(f.name for f in dataclasses.fields(GLAConfig)
                if f.name not in TOKEN_MODEL_ONLY) + ("seed", "rng")


def _config(opts, embed_dim):
    """The GLAConfig of ``build``'s options; unknown options and bad values are refused by name.

    ``embed_dim`` is the default used when ``opts`` has none. ``seed`` and ``rng`` are checked
    (they must not both be given) and dropped: they change values, not the configuration.
    """
    for name in opts:
        if name in TOKEN_MODEL_ONLY:
            raise ValueError(f"{name}: an option of the token model (gla_np.lm), which has an "
                             f"embedding; these models take vectors")
        if name not in OPTIONS:
            raise ValueError(f"{name}: unknown option; expected one of {sorted(OPTIONS)}")
    opts = dict(opts)
    _rng(opts.pop("seed", None), opts.pop("rng", None))
    opts.setdefault("embed_dim", embed_dim)
    return GLAConfig(**opts)


def output_size(**opts):
    """The width of the model's output: ``hidden_size`` (default 256), as in Edifice.

    Accepts the options of ``build`` and checks them as ``build`` does.
    """
    return _config(opts, 287).hidden_size


def param_count(**opts):
    """The EXACT number of scalars ``build(**opts).params`` holds (embed_dim defaults to 287).

    Accepts the options of ``build`` and checks them as ``build`` does; ``seed`` and ``rng``
    change values only, not the count.
    """
    return model.param_count(_config(opts, 287))


def _rng(seed, rng):
    if rng is not None and seed is not None:
        raise ValueError("rng: pass either seed or rng, not both")
    if rng is None:
        return np.random.default_rng(None if seed is None else check_nonnegative_int("seed", seed))
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng: expected an np.random.Generator, got {type(rng).__name__}")
    return rng


@dataclasses.dataclass
class GLAModel:
    """config + params, with the model's pure functions as methods."""

    config: GLAConfig
    params: dict

    def forward(self, x, *, training=False, rng=None, return_sequence=False):
        """x (B, T, embed_dim) -> (y, cache); y (B, hidden_size), or (B, T, hidden_size)."""
        return model.forward(self.params, x, self.config, training=training, rng=rng,
                             return_sequence=return_sequence)

    def backward(self, dy, cache):
        """(dx, grads), grads keyed like ``params``."""
        return model.backward(dy, cache)

    def init_state(self, batch):
        """Per-layer streaming states before the first token."""
        return model.init_state(self.config, batch)

    def step(self, x_t, state):
        """One position: x_t (B, embed_dim) -> (y_t (B, hidden_size), new_state)."""
        return model.step(self.params, x_t, state, self.config)


@dataclasses.dataclass
class GLAPart:
    """config + params of one part on (B, T, hidden_size), run by the pure functions of
    ``module``: a subclass names it (``gla_layer`` for a layer, ``block`` for a block)."""

    config: GLAConfig
    params: dict
    module = None  # the module whose forward, backward and step this part calls
    cache_type = None  # the cache its forward returns

    def forward(self, x, *, training=False, rng=None):
        """x (B, T, hidden_size) -> (out, cache), out of x's shape."""
        check_bool("training", training)
        return self.module.forward(self.params, x, self.config, training=training, rng=rng)

    def backward(self, dout, cache):
        """(dx, grads), grads keyed like ``params``."""
        check_cache(cache, self.cache_type, f"{self.module.__name__.rsplit('.', 1)[-1]}.forward")
        return self.module.backward(dout, cache)

    def init_state(self, batch):
        """The streaming state before the first token (a ``gla_layer.LayerState``)."""
        return gla_layer.init_state(self.config, check_positive_int("batch", batch))

    def step(self, x_t, state):
        """One position: x_t (B, hidden_size) -> (y_t, new_state). Checks params once per call."""
        check_params(self.params, self.module.param_shapes(self.config), self.config.dtype)
        return self.module.step(self.params, x_t, state, self.config)


class GLALayer(GLAPart):
    """One GLA layer (pre-norm, token mixer, dropout, residual): ``gla_np.gla_layer``."""

    module = gla_layer
    cache_type = gla_layer.GLALayerCache


class GLABlock(GLAPart):
    """One block (GLA layer then SwiGLU feed-forward, each with residual): ``gla_np.block``."""

    module = block
    cache_type = block.BlockCache


def build(embed_dim=None, hidden_size=256, num_layers=6, num_heads=4, head_dim=64,
          expand_factor=2, dropout=0.1, window_size=60, seq_len=None, *, gate_rank=16,
          gate_normalizer=16, form="chunk", chunk_size=64, norm="rmsnorm", norm_eps=1e-6,
          gate="vector", use_short_conv=False, conv_size=4, dtype="float64", value_head_dim=None,
          intermediate_size=None, o_norm_eps=None, seed=None, rng=None):
    """Edifice's ``GLA.build``: a whole model, freshly initialized. ``embed_dim`` is required.

    Returns a ``GLAModel``. Init draws from ``rng`` or, if none, ``np.random.default_rng(seed)``.
    """
    if embed_dim is None:
        raise ValueError("embed_dim: required (the width of each input position), got None")
    config = GLAConfig(
        embed_dim=embed_dim, hidden_size=hidden_size, num_layers=num_layers,
        num_heads=num_heads, head_dim=head_dim, expand_factor=expand_factor, dropout=dropout,
        window_size=window_size, seq_len=seq_len, gate=gate, gate_rank=gate_rank,
        gate_normalizer=gate_normalizer, form=form, chunk_size=chunk_size, norm=norm,
        norm_eps=norm_eps, use_short_conv=use_short_conv, conv_size=conv_size, dtype=dtype,
        value_head_dim=value_head_dim, intermediate_size=intermediate_size,
        o_norm_eps=o_norm_eps)
    return GLAModel(config, model.init_params(config, _rng(seed, rng)))


def _part_config(opts):
    """A part maps hidden to hidden: embed_dim defaults to hidden_size."""
    return _config(opts, check_positive_int("hidden_size", opts.get("hidden_size", 256)))


def build_gated_linear_attention(*, seed=None, rng=None, **opts):
    """Edifice's ``build_gated_linear_attention``: one layer (with pre-norm and residual).

    Takes the options of ``build`` (hidden_size, num_heads, head_dim, dropout, gate, ...).
    Edifice wires the layer into an Axon graph given an input node; here it is a ``GLALayer``
    holding its own params (names as in ``gla_layer.init_params``).
    """
    config = _part_config(opts)
    return GLALayer(config, gla_layer.init_params(config, _rng(seed, rng)))


def build_gla_block(*, seed=None, rng=None, **opts):
    """Edifice's ``build_gla_block``: one block (layer, then SwiGLU feed-forward), a GLABlock."""
    config = _part_config(opts)
    return GLABlock(config, block.init_params(config, _rng(seed, rng)))
