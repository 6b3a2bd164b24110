"""gla_np: Gated Linear Attention in NumPy, every backward pass derived by hand.

This file is the map of the package, in reading order; the folders follow it. Each module is one
concept, read as a namespace: ``linear.forward(x, W, b)``, ``recurrent.backward(do, dS_T, cache)``.
Each module has one path, its file's: ``gla_np.recurrence.chunked``, and names inside a module
are imported from there (``from gla_np.layers.model import GLAConfig``). The public modules are
also names of the package, imported as ``from gla_np import chunked`` (the docs' form; the same
module object). Private modules (``_chunk_tiles``, ``_gla_inputs``, ``_params``,
``_train_checks``) have only their path in the folder. ``import gla_np.chunked`` and
``from gla_np.model import GLAConfig`` name no file, so they raise ModuleNotFoundError.

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
   (MQAR, copying, selective copying), ``text`` (a character-level task on any UTF-8 file),
   ``lm`` (the token-level model), ``checkpoint``, ``data_parallel``, and the commands
   ``python -m gla_np.train`` and ``python -m gla_np.sample`` (text generation).
6. Checking another GLA implementation: ``testing`` (``judge``, one call to judge a kernel;
   ``reference``, ``assert_close``, hypothesis strategies; a package whose names are all imported
   from ``gla_np.testing``, its docstring the map of its modules) and ``python -m gla_np.golden``
   (golden cases for any language); imported on demand, ``from gla_np import testing``.
7. fla's models: ``fla`` loads a checkpoint of fla's ``GLAForCausalLM`` into ``lm``'s params
   and saves one that fla loads.

Derivation pages mirror the folders: docs/derivations/ops/, recurrence/ and layers/.
"""

from gla_np.gradcheck import GradcheckError, GradcheckReport, TensorCheck, gradcheck

# small ops
from gla_np.ops import (cross_entropy, dropout, embedding, layernorm, linear, logsigmoid, rmsnorm,
                        sigmoid, swish)

# the gated linear recurrence, three forms
from gla_np.recurrence import attention, chunked, gate_identity, parallel, recurrent
from gla_np.recurrence.attention import gla_attention, gla_attention_backward

# the layer, the block, the model
from gla_np.layers import block, edifice, ffn, gate, gla_layer, model, short_conv
from gla_np.layers.edifice import (build, build_gated_linear_attention, build_gla_block,
                                   output_size, param_count, recommended_defaults)
from gla_np.layers.model import GLAConfig

# training
from gla_np.training import checkpoint, data_parallel, lm, optim, tasks, text  # train, sample: commands

# fla's checkpoints
from gla_np import fla

__version__ = "0.1.0"
