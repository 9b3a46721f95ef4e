"""Commands that consume trained checkpoints: ``evaluate`` (``ssp evaluate``), ``stage1_masks``
(``ssp stage1-masks``), ``predict`` (``ssp predict``) and ``train_test`` (``ssp train`` with
``--test-out``: train, then test in the same process)."""
