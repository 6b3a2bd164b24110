"""Step 3 of the reading order: the gated linear recurrence, in three forms with one signature.

Derivations in docs/derivations/recurrence/, read in this order: ``recurrent`` (the definition),
``parallel`` (attention with a decay mask), ``chunked`` (the paper's algorithm, its past pairs by
halving the chunk in ``_chunk_tiles``), ``gate_identity`` (the log-gate gradient from dq and
dk), and ``attention`` (the dispatcher ``gla_attention``); ``_gla_inputs`` checks the inputs all
forms share.
"""
