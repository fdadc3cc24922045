"""The local entry points: ``anonymize`` one table, ``apply`` a chosen transformation to rows.

``anonymize_columns``/``apply_columns`` work on plain columns (``name -> sequence of values``)
so that the CLI need not import pandas; ``anonymize``/``apply`` are the DataFrame versions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from trustspace.anon.domain import Domain, LocalOracle
from trustspace.anon.hierarchy import TOP, Hierarchy
from trustspace.anon.models import PrivacyModel
from trustspace.anon.search import Result, check_lattice, search
from trustspace.anon.spec import SUPPRESSED_MODES, AnonSpec, HierarchySource
from trustspace.errors import ConfigError, DataError

if TYPE_CHECKING:
    import pandas as pd

Columns = Mapping[str, Sequence[Any]]


@dataclass(frozen=True)
class Release:
    """An anonymized table and the report of how it was made."""

    data: pd.DataFrame
    result: Result

    def report(self) -> dict[str, Any]:
        return self.result.report()


def _column(columns: Columns, name: str, what: str) -> Sequence[Any]:
    if name not in columns:
        raise DataError(
            f"{what} {name!r} is not a column of the data; columns are: {', '.join(columns)}"
        )
    return columns[name]


def anonymize_columns(
    columns: Columns,
    quasi_identifiers: AnonSpec | Sequence[str] | Mapping[str, HierarchySource] | None = None,
    hierarchies: Mapping[str, HierarchySource] | None = None,
    *,
    spec: AnonSpec | None = None,
    models: Sequence[PrivacyModel] | None = None,
    **options: Any,
) -> tuple[dict[str, list[Any]], Result]:
    """``anonymize`` on plain columns (``name -> values``): the released columns and the
    ``Result``. ``models`` (a list of ``PrivacyModel``) replaces k/l/t when given."""
    out, result, _ = _anonymize(
        columns, AnonSpec.of(quasi_identifiers, hierarchies, spec=spec, **options), models
    )
    return out, result


def _anonymize(
    columns: Columns, spec: AnonSpec, models: Sequence[PrivacyModel] | None = None
) -> tuple[dict[str, list[Any]], Result, np.ndarray[Any, Any]]:
    hs = spec.hierarchies
    cols = [_column(columns, h.name, "quasi-identifier") for h in hs]
    if spec.sensitive is not None:
        scol = _column(columns, spec.sensitive, "sensitive attribute")
        cols.append(scol)
        spec = spec.complete(scol)  # the data's values, unless the spec declares a domain
    else:
        spec = spec.complete()
    models = spec.models() if models is None else list(models)
    if any(m.needs_sensitive for m in models) and spec.sensitive is None:
        raise ConfigError("l-diversity and t-closeness need sensitive=<column name>")
    domain = spec.domain
    if spec.method == "optimal":
        check_lattice(domain)  # before the rows are encoded: the caps cost nothing to check
    oracle = LocalOracle(domain, cols)
    if spec.method == "optimal":
        result = search(
            oracle, domain, models, suppression_limit=spec.suppression_limit, metric=spec.metric
        )
        out, keep = _apply(columns, result, hs, spec.suppressed)
        return out, result, keep
    from trustspace.anon.mondrian import mondrian

    levels, codes, result = mondrian(oracle, domain, models)
    n = len(cols[0])
    return _release_local(columns, domain, oracle, levels, codes), result, np.ones(n, bool)


def _release_local(
    columns: Columns,
    domain: Domain,
    oracle: LocalOracle,
    levels: np.ndarray[Any, Any],
    codes: np.ndarray[Any, Any],
) -> dict[str, list[Any]]:
    """Rows of a local recoding: each row takes the released values of its distinct tuple."""
    q = len(domain.hierarchies)
    base = np.empty((len(next(iter(columns.values()))), q), dtype=np.int64)
    for j, h in enumerate(domain.hierarchies):
        base[:, j] = h.encode(columns[h.name])
    # index of each row's tuple among the oracle's sorted distinct tuples
    radix = [len(h.values) for h in domain.hierarchies]

    def keyof(mat: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        key = np.zeros(mat.shape[0], dtype=np.int64)
        for j in range(q):
            key = key * radix[j] + mat[:, j]
        return key

    tkeys = keyof(oracle.tuples)
    order = np.argsort(tkeys, kind="stable")
    pos = order[np.searchsorted(tkeys[order], keyof(base))]
    out: dict[str, list[Any]] = {name: list(col) for name, col in columns.items()}
    for j, h in enumerate(domain.hierarchies):
        names = [np.array(h.level_values(lv), dtype=object) for lv in range(h.height)]
        lv_rows, cd_rows = levels[pos, j], codes[pos, j]
        vals = np.empty(len(pos), dtype=object)
        for lv in range(h.height):
            sel = lv_rows == lv
            vals[sel] = names[lv][cd_rows[sel]]
        out[h.name] = vals.tolist()
    return out


def apply_columns(
    columns: Columns,
    result: Result,
    hierarchies: Sequence[Hierarchy] | Mapping[str, Hierarchy],
    *,
    suppressed: str = "drop",
) -> dict[str, list[Any]]:
    """Apply a full-domain ``result`` to rows (each node does this on its own rows).

    Every quasi-identifier is generalized to ``result.levels``; rows whose generalized tuple is
    in ``result.suppressed_classes`` (decided on the global counts) are dropped
    (``suppressed="drop"``) or kept with every quasi-identifier ``*`` (``"mask"``, as ARX
    outputs them). Other columns are passed through unchanged.
    """
    out, _ = _apply(columns, result, hierarchies, suppressed)
    return out


def _apply(
    columns: Columns,
    result: Result,
    hierarchies: Sequence[Hierarchy] | Mapping[str, Hierarchy],
    suppressed: str,
) -> tuple[dict[str, list[Any]], np.ndarray[Any, Any]]:
    """``apply_columns`` plus the mask of the rows kept (all rows with ``"mask"``)."""
    if suppressed not in SUPPRESSED_MODES:
        raise ConfigError(f"suppressed must be one of {SUPPRESSED_MODES}, got {suppressed!r}")
    if not result.levels:
        raise ConfigError("apply needs a full-domain result (method='optimal')")
    hmap = hierarchies if isinstance(hierarchies, Mapping) else {h.name: h for h in hierarchies}
    n = len(next(iter(columns.values()))) if columns else 0
    out: dict[str, list[Any]] = {}
    gen: list[np.ndarray[Any, Any]] = []
    for name, lv in zip(result.quasi_identifiers, result.levels, strict=True):
        if name not in hmap:
            raise ConfigError(f"no hierarchy given for quasi-identifier {name!r}")
        h = hmap[name]
        codes = h.codes(lv)[h.encode(_column(columns, name, "quasi-identifier"))]
        gen.append(np.array(h.level_values(lv), dtype=object)[codes])
    keep = np.ones(n, dtype=bool)
    if result.suppressed_classes and n:
        supp = result.suppressed_classes
        rows = zip(*(g.tolist() for g in gen), strict=True)
        keep = np.fromiter((r not in supp for r in rows), dtype=bool, count=n)
    qi = dict(zip(result.quasi_identifiers, gen, strict=True))
    for name, col in columns.items():
        arr = qi[name] if name in qi else np.asarray(col, dtype=object)
        if suppressed == "drop":
            out[name] = arr[keep].tolist()
        else:
            if name in qi:
                arr = arr.copy()
                arr[~keep] = TOP
            out[name] = arr.tolist()
    return out, keep if suppressed == "drop" else np.ones(n, dtype=bool)


def anonymize(
    df: pd.DataFrame,
    quasi_identifiers: AnonSpec | Sequence[str] | Mapping[str, HierarchySource] | None = None,
    hierarchies: Mapping[str, HierarchySource] | None = None,
    *,
    spec: AnonSpec | None = None,
    **options: Any,
) -> Release:
    """Anonymize one table: k-anonymity, optionally ℓ-diversity and t-closeness.

    Args:
        df: the table (values are matched to hierarchies as strings: ``str(value)``).
        quasi_identifiers: column names (with ``hierarchies``) or ``{column: hierarchy}``
            where a hierarchy is a ``Hierarchy`` or the path of an ARX hierarchy CSV; or a
            whole ``AnonSpec`` (then no options).
        spec: the ``AnonSpec`` (instead of ``quasi_identifiers`` and the options).
        options: any ``AnonSpec`` field, e.g. ``k`` (default 5), ``l``, ``t``, ``sensitive``,
            ``diversity``, ``c``, ``ordered``, ``suppression_limit`` (default 0.05),
            ``metric`` (``loss``; Mondrian's splits follow Loss, all four are reported),
            ``method`` (``"optimal"`` or ``"mondrian"``: local recoding, lower loss, classes
            generalized to different levels), ``suppressed`` (``"drop"`` or ``"mask"``).
            The defaults are the federated ones (k=5, 5 % suppression; before 12.2 this
            function defaulted to k=2 without suppression).

    Returns:
        A ``Release`` with the released DataFrame (string quasi-identifiers; rows keep their
        index, suppressed rows are absent unless ``suppressed="mask"``) and the report.

    Raises:
        ConfigError, DataError: bad parameters, unknown columns, uncovered values, or no
            transformation satisfying the models.

    Privacy: a k-anonymous release hides each record among ``k`` with the same
    quasi-identifiers; it does not protect sensitive values without ℓ-diversity/t-closeness,
    and not against attackers whose background knowledge is outside the quasi-identifiers.

    >>> import pandas as pd
    >>> df = pd.DataFrame({"sex": ["M", "F", "M", "F"], "dx": ["a", "b", "a", "c"]})
    >>> rel = anonymize(df, {"sex": Hierarchy("sex", [("M", "*"), ("F", "*")])}, k=2)
    >>> rel.data["sex"].tolist(), rel.result.levels
    (['M', 'F', 'M', 'F'], (0,))
    """
    import pandas as pd

    spec = AnonSpec.of(quasi_identifiers, hierarchies, spec=spec, **options)
    columns = {str(c): df[c].tolist() for c in df.columns}
    out, result, keep = _anonymize(columns, spec)
    data = pd.DataFrame(out, columns=list(columns), index=df.index[keep])
    for name in data.columns:
        if name not in result.quasi_identifiers:
            data[name] = data[name].astype(df[name].dtype)
    return Release(data=data, result=result)


def apply(
    df: pd.DataFrame,
    result: Result,
    hierarchies: Sequence[Hierarchy] | Mapping[str, Hierarchy],
    *,
    suppressed: str = "drop",
) -> pd.DataFrame:
    """Apply a full-domain ``result`` to a DataFrame's rows (see ``apply_columns``)."""
    import pandas as pd

    columns = {str(c): df[c].tolist() for c in df.columns}
    out, keep = _apply(columns, result, hierarchies, suppressed)
    return pd.DataFrame(out, columns=list(columns), index=df.index[keep])
