"""Training and the shared inference loop: ``inputs`` (records -> datasets -> batches),
``predict`` (the one predict-over-batches loop), ``distributed`` (torchrun/DDP), ``train``
(the loop and the plain ``ssp train`` command). Imports neither ``ssp.eval`` nor
``ssp.report``."""
