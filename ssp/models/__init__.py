"""Models: the AAVS baseline and the SSP additions.

- :mod:`ssp.models.config`: ``SSPConfig`` (all knobs, ``tiny``/``paper`` presets); light,
  no torch import. (Table 2 rows as switch settings: :mod:`ssp.paper`.)
- :mod:`ssp.models.ssp`: ``SSPModel``, ``SSPOutput`` (forward/predict contract).
- :mod:`ssp.models.criterion`: ``SSPCriterion`` (the losses).
- :mod:`ssp.models.weights`: ``load_pretrained`` for local weight files;
  :mod:`ssp.models.checkpoint`: our checkpoints.

``SSPModel``, ``SSPOutput`` and ``load_pretrained`` are package attributes resolved on
first use (PEP 562), so that ``from ssp.models import SSPConfig`` stays torch-free
(0.1 s instead of ~8 s for torch + transformers).
"""

from ssp.models.config import SSPConfig

__all__ = ["SSPConfig", "SSPModel", "SSPOutput", "load_pretrained"]


def __getattr__(name: str):
    if name in ("SSPModel", "SSPOutput"):
        from ssp.models import ssp  # noqa: PLC0415  (lazy package attribute: torch + transformers, ~8 s)

        return getattr(ssp, name)
    if name == "load_pretrained":
        from ssp.models.weights import load_pretrained  # noqa: PLC0415  (lazy package attribute: torch)

        return load_pretrained
    raise AttributeError(name)
