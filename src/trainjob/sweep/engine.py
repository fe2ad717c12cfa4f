"""W&B's sweep engine (the PyPI package ``sweeps``), imported once, with the warnings its
pydantic-v1 style models raise at import silenced. A module of its own so that the trial fork
server can preload it (trials.py): offline early termination asks it at every epoch end."""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import sweeps as engine

__all__ = ["engine"]
