"""Step 4 of the reading order: the layer and the model, pure functions of params and inputs.

Derivations in docs/derivations/layers/, read in this order: ``gate`` (the forget gate and its
variants), ``short_conv``, ``gla_layer``, ``ffn``, ``block``, ``model``, and Edifice's API in
``edifice``; ``_params`` holds the parameter helpers they share.
"""
