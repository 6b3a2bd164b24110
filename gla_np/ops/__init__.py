"""Step 2 of the reading order: the small ops, each a forward/backward pair.

Each module is one op with its derivation in docs/derivations/ops/, read in this order:
``linear``, ``sigmoid``, ``swish``, ``logsigmoid``, ``layernorm``, ``rmsnorm``, ``dropout``,
``embedding``, ``cross_entropy``.
"""
