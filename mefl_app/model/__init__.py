"""The multi-exit models, their exits, the multi-exit loss and compute accounting."""
