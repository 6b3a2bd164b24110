"""gla_np: Gated Linear Attention in NumPy, every backward pass derived by hand.

This file is the map of the package, in reading order. Each module is one concept, read as a
namespace: ``linear.forward(x, W, b)``, ``recurrent.backward(do, dS_T, cache)``.

1. Trusting gradients: ``gradcheck``.
2. Small ops, each a forward/backward pair: ``linear``, ``sigmoid``, ``swish``, ``logsigmoid``,
   ``layernorm``, ``rmsnorm``, ``dropout``, ``embedding``, ``cross_entropy``.
3. The gated linear recurrence in three forms sharing one signature: ``recurrent`` (the
   definition), ``parallel`` (attention with a decay mask), ``chunked`` (the paper's algorithm),
   and the dispatcher ``gla_attention`` / ``gla_attention_backward``.
4. The layer, the block and the model with Edifice's API.
5. Training: optimizers, toy tasks, checkpoints, ``python -m gla_np.train``.
"""

from gla_np.gradcheck import GradcheckError, GradcheckReport, gradcheck

# -- section: small ops (issue 2) --
from gla_np import linear, sigmoid, swish, logsigmoid, layernorm, rmsnorm
from gla_np import dropout, embedding, cross_entropy

# -- section: recurrence (issue 3) --
from gla_np import recurrent, parallel
from gla_np import chunked
from gla_np.attention import gla_attention, gla_attention_backward

# -- section: layer and model (issue 4) --
from gla_np import block, ffn, gate, gla_layer, model, short_conv
from gla_np.edifice import (build, build_gated_linear_attention, build_gla_block, output_size,
                            param_count, recommended_defaults)
from gla_np.model import GLAConfig

# -- section: training (issue 5) --
from gla_np import checkpoint, lm, optim, tasks  # not train: it is a command, run with -m

__version__ = "0.1.0"
