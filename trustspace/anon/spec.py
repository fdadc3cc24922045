"""``AnonSpec``: every option of one anonymization (local or federated), validated once.

The local API (``anonymize``, ``anonymize_columns``), the CLI, ``Federation.anonymize``, the
aggregator and the nodes all take their options from this one frozen dataclass, so the
defaults and the checks are written once. ``to_dict``/``from_dict`` are its JSON form: the
analyst sends it to the aggregator, the aggregator (after completing the sensitive domain)
sends it to every node, and every node checks ``digest()``.

>>> from trustspace.anon.hierarchy import Hierarchy
>>> spec = AnonSpec([Hierarchy("sex", [("M", "*"), ("F", "*")])], k=2)
>>> spec.k, spec.suppression_limit, spec.quasi_identifiers
(2, 0.05, ('sex',))
>>> AnonSpec.from_dict(spec.to_dict()) == spec
True
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, fields, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from trustspace.anon.domain import Domain, sorted_values
from trustspace.anon.hierarchy import Hierarchy
from trustspace.anon.models import PrivacyModel, make_models
from trustspace.anon.search import METRICS, check_lattice, check_shape
from trustspace.errors import ConfigError

#: The defaults of every entry point (local, CLI and federated). They are the federated ones:
#: 5-anonymity is the common floor in practice (ARX's and the literature's examples), and
#: letting up to 5 % of the records be suppressed usually keeps far more detail than
#: generalizing every record further for the sake of a few outliers. (``anon.anonymize`` and
#: the CLI used to default to k=2 without suppression.)
DEFAULT_K = 5
DEFAULT_SUPPRESSION = 0.05
METHODS = ("optimal", "mondrian")
SUPPRESSED_MODES = ("drop", "mask")
DIVERSITIES = ("distinct", "entropy", "recursive")
#: ``"base"``: one round learns the global histogram of the original (level-0) tuples and every
#: lattice node is rolled up from it; ``"visited"``: one round per visited lattice node that no
#: histogram already learned is finer than (less disclosed, many more rounds).
DISCLOSURES = ("base", "visited")

HierarchySource = Hierarchy | str | Path


def default_of(name: str) -> Any:
    """The default of ``AnonSpec`` field ``name`` (for front ends that show it).

    >>> default_of("k"), default_of("metric")
    (5, 'loss')
    """
    return {f.name: f.default for f in fields(AnonSpec)}[name]


def numeric(values: Sequence[str]) -> bool:
    """Whether every value parses as a number (then t-closeness uses the ordered distance).

    >>> numeric(["1", "2.5"]), numeric(["1", "x"])
    (True, False)
    """
    try:
        for v in values:
            float(v)
    except ValueError:
        return False
    return True


def named_hierarchies(
    quasi_identifiers: Sequence[str] | Mapping[str, HierarchySource],
    hierarchies: Mapping[str, HierarchySource] | None = None,
) -> tuple[Hierarchy, ...]:
    """One hierarchy per quasi-identifier, named after its column, in the given order.

    Args:
        quasi_identifiers: column names (looked up in ``hierarchies``) or ``{column:
            hierarchy}``; a hierarchy is a ``Hierarchy`` (renamed to its column when it has
            another name) or the path of an ARX hierarchy CSV (read here).
        hierarchies: ``{column: hierarchy}`` when ``quasi_identifiers`` lists names.

    Raises:
        ConfigError: no quasi-identifier, or one without a hierarchy.
        DataError: a hierarchy file cannot be read.
    """
    if isinstance(quasi_identifiers, Mapping):
        given: Mapping[str, HierarchySource] = quasi_identifiers
    else:
        given = hierarchies or {}
    names = list(quasi_identifiers)
    if not names:
        raise ConfigError("name at least one quasi-identifier: {column: hierarchy}")
    out = []
    for name in names:
        h = given.get(name)
        if h is None:
            raise ConfigError(
                f"quasi-identifier {name!r} has no hierarchy; pass hierarchies={{{name!r}: ...}} "
                "(a Hierarchy or the path of an ARX hierarchy CSV)"
            )
        if not isinstance(h, Hierarchy):
            h = Hierarchy.from_csv(h, name)
        elif h.name != name:
            h = Hierarchy(name, h.rows, source=h.source)
        out.append(h)
    return tuple(out)


def _check_number(name: str, value: object, *, optional: bool = True) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ConfigError(f"{name} must be a number{' or None' if optional else ''}, got {value!r}")


def _check_choice(name: str, value: object, choices: Sequence[str], hint: str = "") -> None:
    if value not in choices:
        raise ConfigError(
            f"unknown {name} {value!r}: {name} must be one of {', '.join(choices)}{hint}"
        )


def _shape(i: int, h: Any) -> tuple[str, int, int]:
    """``(column, rows, height)`` of a hierarchy as it arrives in a spec (before validation)."""
    if not isinstance(h, Mapping):
        return f"hierarchies[{i}]", 0, 0
    rows = h.get("rows")
    first = rows[0] if isinstance(rows, list) and rows else None
    name = h.get("name")
    return (
        name if isinstance(name, str) else f"hierarchies[{i}]",
        len(rows) if isinstance(rows, list) else 0,
        len(first) if isinstance(first, list) else 0,
    )


@dataclass(frozen=True)
class AnonSpec:
    """One anonymization request: the quasi-identifiers' hierarchies and every option.

    Validated at construction (a spec with ``k=0`` cannot exist); every error is a
    ``ConfigError`` that names the field.

    Args:
        hierarchies: one per quasi-identifier, in lattice order (``named_hierarchies`` builds
            them from ``{column: hierarchy or ARX CSV path}``).
        k: every released class has at least ``k`` records (default ``DEFAULT_K`` = 5).
        l, diversity, c: ℓ-diversity of ``sensitive``: ``"distinct"``, ``"entropy"`` or
            ``"recursive"`` (with ``c``).
        t, ordered: t-closeness of ``sensitive``; ``ordered`` distance (``None``: chosen from
            the values, ordered when they are all numbers, as pycanon and ARX do).
        sensitive, sensitive_values: the sensitive attribute and its value domain, in the
            order of the ordered distance (``None``: the values found in the data, locally, or
            the domain declared in the node configs, federated).
        suppression_limit: fraction of records that may be suppressed (default
            ``DEFAULT_SUPPRESSION`` = 0.05; optimal method only, Mondrian suppresses nothing).
        metric: ``loss``, ``entropy``, ``discernibility`` or ``aecs``: the search objective.
        method: ``"optimal"`` (full-domain, globally optimal) or ``"mondrian"`` (local
            recoding; local only).
        suppressed: ``"drop"`` suppressed rows or ``"mask"`` their quasi-identifiers.
        dataset: the dataset every node anonymizes (federated only; ``""`` locally).
        disclosure: ``"visited"`` or ``"base"`` (federated only; see ``DISCLOSURES``).

    Privacy: a k-anonymous release hides each record among ``k`` with the same
    quasi-identifiers; it does not protect sensitive values without ℓ-diversity/t-closeness.
    """

    hierarchies: tuple[Hierarchy, ...]
    _: KW_ONLY
    k: int = DEFAULT_K
    l: float | None = None  # noqa: E741 - ℓ is the literature's name
    t: float | None = None
    diversity: str = "distinct"
    c: float | None = None
    ordered: bool | None = None
    sensitive: str | None = None
    sensitive_values: tuple[str, ...] | None = None
    suppression_limit: float = DEFAULT_SUPPRESSION
    metric: str = "loss"
    method: str = "optimal"
    suppressed: str = "drop"
    dataset: str = ""
    disclosure: str = "visited"

    def __post_init__(self) -> None:
        hs = self.hierarchies
        if isinstance(hs, Hierarchy) or not isinstance(hs, Sequence):
            raise ConfigError(f"hierarchies must be a sequence of Hierarchy, got {hs!r}")
        bad = [h for h in hs if not isinstance(h, Hierarchy)]
        if bad:
            raise ConfigError(
                f"hierarchies must be Hierarchy objects, got {bad[0]!r} (named_hierarchies "
                "builds them from {column: ARX CSV path})"
            )
        object.__setattr__(self, "hierarchies", tuple(hs))
        if not isinstance(self.k, int) or isinstance(self.k, bool) or self.k < 1:
            raise ConfigError(f"k must be an integer >= 1, got {self.k!r}")
        for name in ("l", "t", "c"):
            _check_number(name, getattr(self, name))
        _check_number("suppression_limit", self.suppression_limit, optional=False)
        if not 0.0 <= self.suppression_limit <= 1.0:
            raise ConfigError(
                f"suppression_limit must be in [0, 1] (a fraction of the records), got "
                f"{self.suppression_limit!r}"
            )
        _check_choice("diversity", self.diversity, DIVERSITIES)
        _check_choice("metric", self.metric, METRICS)
        _check_choice("method", self.method, METHODS)
        _check_choice("suppressed", self.suppressed, SUPPRESSED_MODES)
        _check_choice(
            "disclosure",
            self.disclosure,
            DISCLOSURES,
            " (see docs/security.md (k-anonymization), 'Federated anonymization')",
        )
        if self.ordered is not None and not isinstance(self.ordered, bool):
            raise ConfigError(f"ordered must be true, false or None, got {self.ordered!r}")
        if not isinstance(self.dataset, str):
            raise ConfigError(f"dataset must be a name, got {self.dataset!r}")
        if self.sensitive is not None and (
            not isinstance(self.sensitive, str) or not self.sensitive
        ):
            raise ConfigError(f"sensitive must be a column name, got {self.sensitive!r}")
        if self.sensitive_values is not None:
            sv = self.sensitive_values
            if isinstance(sv, str | bytes) or not isinstance(sv, Sequence):
                raise ConfigError(f"sensitive_values must be a list of values, got {sv!r}")
            object.__setattr__(self, "sensitive_values", tuple(str(v) for v in sv))
            if self.sensitive is None:
                raise ConfigError("sensitive_values given without sensitive=<column name>")
            if not self.sensitive_values:
                raise ConfigError(f"sensitive_values of {self.sensitive!r} is empty")
        models = self.models()  # validates l, t and c together with diversity
        if any(m.needs_sensitive for m in models) and self.sensitive is None:
            raise ConfigError("l-diversity and t-closeness need sensitive=<column name>")
        # validates the quasi-identifiers together (names) and the caps on the lattice
        check_lattice(Domain(self.hierarchies))
        if self.sensitive in self.quasi_identifiers:
            raise ConfigError(
                f"column {self.sensitive!r} is both a quasi-identifier and the sensitive attribute"
            )

    # ---------------------------------------------------------------- derived
    @property
    def quasi_identifiers(self) -> tuple[str, ...]:
        return tuple(h.name for h in self.hierarchies)

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column the histograms read: the quasi-identifiers and the sensitive one."""
        return self.quasi_identifiers + ((self.sensitive,) if self.sensitive else ())

    @cached_property
    def domain(self) -> Domain:
        """The public layout of generalized tuples (needs ``sensitive_values``: ``complete``)."""
        if self.sensitive is not None and self.sensitive_values is None:
            raise ConfigError(
                f"the sensitive attribute {self.sensitive!r} needs its public value domain: pass "
                "sensitive_values=[...] or declare a domain for the column in the node configs"
            )
        return Domain(list(self.hierarchies), self.sensitive, self.sensitive_values)

    def models(self) -> list[PrivacyModel]:
        """The privacy models (k-anonymity, then ℓ-diversity and t-closeness if asked)."""
        try:
            return make_models(
                self.k, self.l, diversity=self.diversity, c=self.c, t=self.t, ordered=self._ordered
            )
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"privacy models: {exc}") from None

    @property
    def _ordered(self) -> bool:
        if self.ordered is not None:
            return self.ordered
        sv = self.sensitive_values or ()
        return bool(sv) and numeric(sv)

    def check_federated(self) -> None:
        """Raise ``ConfigError`` unless this spec can run federated (a dataset, the optimal
        method: Mondrian's local recoding has no federated version)."""
        if not self.dataset:
            raise ConfigError("name the dataset to anonymize (dataset=...)")
        if self.method != "optimal":
            raise ConfigError(
                f"method {self.method!r} is local only (trustspace.anon.anonymize); federated "
                "anonymization runs the optimal full-domain search"
            )

    def complete(self, sensitive_values: Sequence[object] = ()) -> AnonSpec:
        """The spec with its sensitive domain and ``ordered`` fixed.

        ``sensitive_values`` (the data's values, or the domain declared for the column) is
        used, sorted as ``sorted_values``, only when the spec has none of its own.
        """
        spec = self
        if spec.sensitive is not None and spec.sensitive_values is None:
            spec = replace(spec, sensitive_values=tuple(sorted_values(sensitive_values)))
        return replace(spec, ordered=spec._ordered)

    # ---------------------------------------------------------------- the JSON form
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; hierarchies as ``{name, rows}`` (ARX CSV rows)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            out[f.name] = getattr(self, f.name)
        out["hierarchies"] = [
            {"name": h.name, "rows": [list(r) for r in h.rows]} for h in self.hierarchies
        ]
        sv = self.sensitive_values
        out["sensitive_values"] = None if sv is None else list(sv)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AnonSpec:
        """Inverse of ``to_dict``; strict: an unknown key is refused.

        Raises:
            ConfigError: ``anonymization spec: ...`` naming the unknown key, or the missing
                or malformed field.
        """
        where = "anonymization spec"
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise ConfigError(
                f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        raw = data.get("hierarchies")
        if not isinstance(raw, list) or not raw:
            raise ConfigError(f"{where}: 'hierarchies' must be a non-empty list")
        check_shape([_shape(i, h) for i, h in enumerate(raw)])  # the caps, before building any
        hs = []
        for i, h in enumerate(raw):
            if (
                not isinstance(h, Mapping)
                or not isinstance(h.get("name"), str)
                or not isinstance(h.get("rows"), list)
                or not all(
                    isinstance(r, list) and all(isinstance(v, str) for v in r) for r in h["rows"]
                )
            ):
                raise ConfigError(
                    f"{where}: hierarchies[{i}] must be {{name: str, rows: [[str, ...], ...]}}"
                )
            try:
                hs.append(Hierarchy(h["name"], h["rows"], source="request"))
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from None
        kw = {k: v for k, v in data.items() if k != "hierarchies"}
        sv = kw.get("sensitive_values")
        if sv is not None and (not isinstance(sv, list) or not all(isinstance(v, str) for v in sv)):
            raise ConfigError(f"{where}: 'sensitive_values' must be a list of strings")
        try:
            return cls(tuple(hs), **kw)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    @classmethod
    def of(
        cls,
        quasi_identifiers: AnonSpec | Sequence[str] | Mapping[str, HierarchySource] | None,
        hierarchies: Mapping[str, HierarchySource] | None = None,
        *,
        spec: AnonSpec | None = None,
        **options: Any,
    ) -> AnonSpec:
        """The spec of a keyword-argument call: ``spec`` (or ``quasi_identifiers`` when it is
        one) as it is, else ``AnonSpec(named_hierarchies(...), **options)``.

        Raises:
            ConfigError: both a spec and options, or an unknown option (named).
        """
        if isinstance(quasi_identifiers, AnonSpec):
            spec, quasi_identifiers = quasi_identifiers, None
        if spec is not None:
            if quasi_identifiers is not None or hierarchies is not None or options:
                given = [*options, *(["hierarchies"] if hierarchies is not None else [])]
                raise ConfigError(
                    "give either a spec or the options, not both (also given: "
                    f"{', '.join(given) or 'quasi_identifiers'}); use dataclasses.replace(spec, "
                    "...) to change a spec"
                )
            return spec
        known = {f.name for f in fields(cls)} - {"hierarchies"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(
                f"unknown anonymization option(s) {', '.join(unknown)}; known: "
                f"{', '.join(sorted(known))}"
            )
        if quasi_identifiers is None:
            raise ConfigError("name at least one quasi-identifier: {column: hierarchy}")
        return cls(named_hierarchies(quasi_identifiers, hierarchies), **options)

    def digest(self) -> str:
        """SHA-256 of the canonical JSON: nodes check they all answer the same spec."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()
