"""gla_np: Gated Linear Attention in NumPy, every backward pass derived by hand.

This file is the map of the package, in reading order. Each module is one concept, read as a
namespace: ``linear.forward(x, W, b)``, ``recurrent.backward(do, dS_T, cache)``.

1. Trusting gradients: ``gradcheck``.
2. Small ops, each a forward/backward pair: ``linear``, ``sigmoid``, ``swish``, ``logsigmoid``,
   ``layernorm``, ``rmsnorm``, ``dropout``, ``embedding``, ``cross_entropy``.
3. The gated linear recurrence in three forms sharing one signature: ``recurrent`` (the
   definition), ``parallel`` (attention with a decay mask), ``chunked`` (the paper's algorithm),
   and the dispatcher ``gla_attention`` / ``gla_attention_backward``.
4. The layer and the model: ``gate`` (the forget gate and its variants), ``short_conv``,
   ``gla_layer``, ``ffn``, ``block``, ``model`` (pure functions), and Edifice's API in
   ``edifice``: ``build``, ``output_size``, ``param_count``, ``recommended_defaults``.
5. Training: ``optim`` (SGD, Adam, AdamW, clipping, schedule), ``tasks`` (MQAR, copying,
   selective copying), ``lm`` (the token-level model), ``checkpoint``, and the command
   ``python -m gla_np.train``.
6. Checking another GLA implementation: ``testing`` (``reference``, ``assert_close``, hypothesis
   strategies) and ``python -m gla_np.golden`` (golden cases for any language); imported on
   demand, ``from gla_np import testing``.
7. fla's models: ``fla`` loads a checkpoint of fla's ``GLAForCausalLM`` into ``lm``'s params
   and saves one that fla loads.
"""

from gla_np.gradcheck import GradcheckError, GradcheckReport, TensorCheck, gradcheck

# small ops
from gla_np import linear, sigmoid, swish, logsigmoid, layernorm, rmsnorm, dropout, embedding
from gla_np import cross_entropy

# the gated linear recurrence, three forms
from gla_np import recurrent, parallel, chunked
from gla_np.attention import gla_attention, gla_attention_backward

# the layer, the block, the model
from gla_np import block, ffn, gate, gla_layer, model, short_conv
from gla_np.edifice import (build, build_gated_linear_attention, build_gla_block, output_size,
                            param_count, recommended_defaults)
from gla_np.model import GLAConfig

# training
from gla_np import checkpoint, lm, optim, tasks  # not train: it is a command, run with -m

# fla's checkpoints
from gla_np import fla

__version__ = "0.1.0"
