"""gla_np: Gated Linear Attention in NumPy, every backward pass derived by hand.

This file is the map of the package, in reading order; the folders follow it. Each module is one
concept, read as a namespace: ``linear.forward(x, W, b)``, ``recurrent.backward(do, dS_T, cache)``.
Every module is also reachable at its flat path of version 0.1 (``gla_np.linear``,
``from gla_np.model import GLAConfig``).

1. Trusting gradients: ``gradcheck`` (gla_np/gradcheck.py).
2. Small ops, each a forward/backward pair, in gla_np/ops/: ``linear``, ``sigmoid``, ``swish``,
   ``logsigmoid``, ``layernorm``, ``rmsnorm``, ``dropout``, ``embedding``, ``cross_entropy``.
3. The gated linear recurrence in three forms sharing one signature, in gla_np/recurrence/:
   ``recurrent`` (the definition), ``parallel`` (attention with a decay mask), ``chunked`` (the
   paper's algorithm), ``gate_identity``, and the dispatcher ``gla_attention`` /
   ``gla_attention_backward`` (``attention``).
4. The layer and the model, in gla_np/layers/: ``gate`` (the forget gate and its variants),
   ``short_conv``, ``gla_layer``, ``ffn``, ``block``, ``model`` (pure functions), and Edifice's
   API in ``edifice``: ``build``, ``output_size``, ``param_count``, ``recommended_defaults``.
5. Training, in gla_np/training/: ``optim`` (SGD, Adam, AdamW, clipping, schedule), ``tasks``
   (MQAR, copying, selective copying), ``lm`` (the token-level model), ``checkpoint``,
   ``data_parallel``, and the command ``python -m gla_np.train``.
6. Checking another GLA implementation: ``testing`` (``reference``, ``assert_close``, hypothesis
   strategies) and ``python -m gla_np.golden`` (golden cases for any language); imported on
   demand, ``from gla_np import testing``.
7. fla's models: ``fla`` loads a checkpoint of fla's ``GLAForCausalLM`` into ``lm``'s params
   and saves one that fla loads.

Derivation pages mirror the folders: docs/derivations/ops/, recurrence/ and layers/.
"""

import importlib
import sys

from gla_np.gradcheck import GradcheckError, GradcheckReport, TensorCheck, gradcheck

# small ops
from gla_np.ops import (cross_entropy, dropout, embedding, layernorm, linear, logsigmoid, rmsnorm,
                        sigmoid, swish)

# the gated linear recurrence, three forms
from gla_np.recurrence import chunked, parallel, recurrent
from gla_np.recurrence.attention import gla_attention, gla_attention_backward

# the layer, the block, the model
from gla_np.layers import block, ffn, gate, gla_layer, model, short_conv
from gla_np.layers.edifice import (build, build_gated_linear_attention, build_gla_block,
                                   output_size, param_count, recommended_defaults)
from gla_np.layers.model import GLAConfig

# training
from gla_np.training import checkpoint, lm, optim, tasks  # not train: it is a command, run with -m

# fla's checkpoints
from gla_np import fla

# The flat paths of version 0.1 keep working: gla_np.linear, `import gla_np.chunked` and
# `from gla_np.model import GLAConfig` name the same module objects as their paths in the folders.
# (gla_np.train is a file of its own, so that `python -m gla_np.train` runs the command.)
FLAT_PATHS_0_1 = {
    "ops": ("linear", "sigmoid", "swish", "logsigmoid", "layernorm", "rmsnorm", "dropout",
            "embedding", "cross_entropy"),
    "recurrence": ("recurrent", "parallel", "chunked", "_chunk_tiles", "_gla_inputs", "attention",
                   "gate_identity"),
    "layers": ("gate", "short_conv", "gla_layer", "ffn", "block", "model", "edifice", "_params"),
    "training": ("optim", "tasks", "lm", "checkpoint", "data_parallel", "_train_checks"),
}
for _group, _names in FLAT_PATHS_0_1.items():
    for _name in _names:
        _module = importlib.import_module(f"gla_np.{_group}.{_name}")
        sys.modules[f"gla_np.{_name}"] = _module
        globals()[_name] = _module
del _group, _names, _name, _module

__version__ = "0.1.0"
