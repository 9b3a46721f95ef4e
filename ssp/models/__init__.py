"""Models: the AAVS baseline and the SSP additions.

- :mod:`ssp.models.config`: ``SSPConfig`` (all knobs, ``tiny``/``paper`` presets) and
  Light: no torch import. (Table 2 rows as switch settings: :mod:`ssp.paper`.)
- :mod:`ssp.models.ssp`: ``SSPModel``, ``SSPOutput`` (forward/predict contract).
- :mod:`ssp.models.weights`: ``load_pretrained`` for local weight files.
- :mod:`ssp.models.criterion` (outside this package): ``SSPCriterion``.

The torch-heavy names are imported lazily so that light CLI commands can import the
config without torch.
"""

from ssp.models.config import SSPConfig

__all__ = ["SSPConfig", "SSPModel", "SSPOutput", "load_pretrained"]


def __getattr__(name: str):
    if name in ("SSPModel", "SSPOutput"):
        from ssp.models import ssp

        return getattr(ssp, name)
    if name == "load_pretrained":
        from ssp.models.weights import load_pretrained

        return load_pretrained
    raise AttributeError(name)
