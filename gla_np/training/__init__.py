"""Step 5 of the reading order: training a small model on toy tasks.

Read in this order: ``optim`` (SGD, Adam, AdamW, clipping, schedule), ``tasks`` (MQAR, copying,
selective copying), ``lm`` (the token-level model), ``checkpoint``, ``data_parallel`` (shards of a
batch on threads), and the command in ``train`` (run as ``python -m gla_np.train``), whose
up-front checks are in ``_train_checks``.
"""
