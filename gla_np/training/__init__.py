"""Step 5 of the reading order: training a small model on toy tasks.

Read in this order: ``optim`` (SGD, Adam, AdamW, clipping, schedule), ``tasks`` (MQAR, copying,
selective copying), ``text`` (a text file as a task, one token per character), ``lm`` (the
token-level model), ``checkpoint``, ``data_parallel`` (shards of a batch on threads), the command
in ``train`` (run as ``python -m gla_np.train``), whose up-front checks are in ``_train_checks``,
and ``sample`` (run as ``python -m gla_np.sample``: a text run writes, one character at a time).
"""
