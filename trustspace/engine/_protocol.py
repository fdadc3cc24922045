"""LocalEngine: what a node's request handlers need of its engine (``Engine`` implements it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import pandas as pd

    from trustspace.engine._engine import Engine
    from trustspace.stats import Round, TableSchema

__all__ = ["LocalEngine"]


class LocalEngine(Protocol):
    """The engine a node computes with, typed structurally.

    ``trustspace.engine.Engine`` (DuckDB over the node's files) is the implementation; a
    test may pass any object with these five methods. They are exactly what the node's
    statistics and anonymization handlers call. Start-up and lifetime (``validate``,
    ``close``) are left out on purpose: the node server that builds the ``Engine`` owns
    them, the handlers never call them.
    """

    def schema(self, name: str) -> TableSchema:
        """The public schema of dataset ``name``; ConfigError naming the known datasets."""
        ...

    def compute(self, rnd: Round, tag: str | None = None) -> npt.NDArray[np.float64]:
        """The round's local float64 vector over this node's rows (``rnd.size`` entries)."""
        ...

    def tuple_histogram(
        self, dataset: str, columns: Sequence[str], where: str | None = None
    ) -> tuple[list[tuple[Any, ...]], npt.NDArray[np.int64]]:
        """Distinct tuples of ``columns`` (nulls as None) and their counts, in sorted order."""
        ...

    def rows(
        self, dataset: str, columns: Sequence[str] | None = None, where: str | None = None
    ) -> pd.DataFrame:
        """This node's own rows of ``dataset`` (optionally some columns, filtered)."""
        ...

    def column_frame(self, dataset: str, columns: Sequence[str]) -> pd.DataFrame:
        """Whole columns in file row order (the id column included), for vertical jobs."""
        ...


if TYPE_CHECKING:

    def _engine_is_a_local_engine(engine: Engine) -> LocalEngine:
        return engine  # mypy checks here that Engine satisfies the protocol
