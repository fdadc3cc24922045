"""Differentially private synthetic tables from the nodes' noisy marginals (``fed.synthesize``).

No curator ever sees the rows or a node's marginals: every measurement is a ``marginals``
query (``Federation.marginals``) whose noise the nodes add inside secure aggregation and
charge to their own budgets; the selection of what to measure is made from such noisy
measurements too, and the model fit (Private-PGM's ``mbi``) and the sampling run at the
analyst, on DP output only (post-processing).

- ``_domain``: the public domain of each column (levels, or bins over declared bounds).
- ``_mst``: federated MST (McKenna, Miklau, Sheldon 2021), its three measurement steps.
"""

from __future__ import annotations

from trustspace.synth._domain import Column, SynthDomain, synth_domain
from trustspace.synth._mst import synthesize

__all__ = ["Column", "SynthDomain", "synth_domain", "synthesize"]
