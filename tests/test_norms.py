"""What LayerNorm and RMSNorm must do alike with a bad upstream gradient, tested once for both.

Each norm's own file tests its formula, its gradient and its bad inputs.
"""

import re

import numpy as np
import pytest

from gla_np import layernorm, rmsnorm

W = np.array([0.5, -1.0, 2.0, 1.5])
B = np.array([0.1, 0.0, -0.2, 0.3])
NORMS = {
    "layernorm": lambda x: layernorm.forward(x, W, B),
    "rmsnorm": lambda x: rmsnorm.forward(x, W),
}
BACKWARDS = {"layernorm": layernorm.backward, "rmsnorm": rmsnorm.backward}
BAD_UPSTREAM = {
    "dy-wrong-shape": (np.ones((4, 2)), "dy: expected shape (2, 4), got (4, 2)"),
    "dy-nan": (np.full((2, 4), np.nan), "dy: contains nan or inf"),
    "dy-float32": (np.ones((2, 4), np.float32), "dy: float32"),
}


@pytest.mark.parametrize("dy, message", BAD_UPSTREAM.values(), ids=BAD_UPSTREAM.keys())
@pytest.mark.parametrize("norm", NORMS, ids=str)
def test_bad_upstream_raises(norm, dy, message):
    _, cache = NORMS[norm](np.arange(8.0).reshape(2, 4))
    with pytest.raises(ValueError, match=re.escape(message)):
        BACKWARDS[norm](dy, cache)
