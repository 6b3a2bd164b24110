"""Bad arguments to the model's and Edifice's API: a ValueError naming the argument, never an
AttributeError from inside or a truthy string taken as True."""

import numpy as np
import pytest

from gla_np.layers import edifice, model
from gla_np.layers.model import GLAConfig

CONFIG = GLAConfig(embed_dim=8, hidden_size=8, num_layers=1, num_heads=2, head_dim=4,
                   window_size=5)


def _model_and_x():
    params = model.init_params(CONFIG, np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((2, 5, 8))
    return params, x


@pytest.mark.parametrize("cache", [None, (1, 2), "cache"], ids=["None", "tuple", "text"])
def test_model_backward_names_a_wrong_cache(cache):
    """Regression: model.backward(dy, None) raised AttributeError."""
    with pytest.raises(ValueError, match=r"^cache: expected the ModelCache that model.forward "
                                         r"returned, got "):
        model.backward(np.zeros((2, 8)), cache)


@pytest.mark.parametrize("name", ["return_sequence", "training"])
def test_flags_must_be_true_or_false(name):
    """Regression: forward(return_sequence="no") was taken as True."""
    params, x = _model_and_x()
    with pytest.raises(ValueError, match=f"^{name}: expected True or False, got 'no'$"):
        model.forward(params, x, CONFIG, **{name: "no"})


def test_edifice_parts_name_a_wrong_cache_and_flag():
    layer = edifice.build_gated_linear_attention(hidden_size=8, num_heads=2, head_dim=4,
                                                 seed=0)
    x = np.random.default_rng(1).standard_normal((2, 5, 8))
    y, cache = layer.forward(x)
    with pytest.raises(ValueError, match=r"^cache: expected the GLALayerCache that "
                                         r"gla_layer.forward returned, got NoneType$"):
        layer.backward(y, None)
    with pytest.raises(ValueError, match=r"^training: expected True or False"):
        layer.forward(x, training="yes")
    net = edifice.build(embed_dim=8, hidden_size=8, num_layers=1, num_heads=2, head_dim=4,
                        seed=0)
    with pytest.raises(ValueError, match=r"^return_sequence: expected True or False"):
        net.forward(x, return_sequence="no")
    dx, grads = layer.backward(y, cache)  # the right cache still works
    assert dx.shape == x.shape and set(grads) == set(layer.params)
