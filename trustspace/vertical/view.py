"""A vertical view: the aligned intersection of several nodes' rows, named by the PSI request.

``fed.intersect(..., mode="align")`` leaves, at every node, its own rows of the intersection in
one order common to all of them (``trustspace.vertical.psi``). A statistic over the view signs a
``ViewRef``: the view's id (the intersect request's id), its nodes and each node's public schema
as the analyst was told it. The statistics state machine then runs over the *union* schema, whose
columns are named ``node.column`` (``union_schema``); each node checks its own part against its
own schema before computing anything (``check_own``).

>>> from trustspace.stats import TableSchema
>>> ref = ViewRef("0" * 32, "default", ("bank", "telco"), {
...     "bank": TableSchema({"age": "int"}, bounds={"age": (0, 120)}),
...     "telco": TableSchema({"region": "str"}, domains={"region": ["n", "s"]})}, 120)
>>> dict(ref.union_schema().columns)
{'bank.age': <ColumnType.INT: 'int'>, 'telco.region': <ColumnType.STR: 'str'>}
>>> ref.owner("telco.region", "query")
('telco', 'region')
>>> ViewRef.from_dict(ref.to_dict()) == ref
True
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from trustspace.errors import ConfigError, ProtocolError
from trustspace.stats import TableSchema

__all__ = ["MAX_VIEW_NODES", "ViewRef", "union_schemas"]

#: Most nodes one view joins (PSI cost grows with the square of the nodes).
MAX_VIEW_NODES = 16
_ID = re.compile(r"[0-9a-f]{32}")
_NODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def union_schemas(schemas: Mapping[str, TableSchema], nodes: Sequence[str]) -> TableSchema:
    """One schema over the nodes' columns, each named ``node.column`` (domains and bounds too)."""
    cols: dict[str, Any] = {}
    domains: dict[str, Any] = {}
    bounds: dict[str, Any] = {}
    for node in nodes:
        s = schemas[node]
        for c, t in s.columns.items():
            cols[f"{node}.{c}"] = t
        for c, d in s.domains.items():
            domains[f"{node}.{c}"] = d
        for c, b in s.bounds.items():
            bounds[f"{node}.{c}"] = b
    return TableSchema(cols, domains=domains, bounds=bounds)


@dataclass(frozen=True)
class ViewRef:
    """What a statistic over a vertical view signs: which view, and the schemas it plans on."""

    id: str
    dataset: str
    nodes: tuple[str, ...]
    schemas: Mapping[str, TableSchema]
    size: int

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not _ID.fullmatch(self.id):
            raise ProtocolError("view 'id': expected the 32 hex digits of an intersect request")
        nodes = tuple(self.nodes)
        if not 2 <= len(nodes) <= MAX_VIEW_NODES or len(set(nodes)) != len(nodes):
            raise ProtocolError(f"view 'nodes': expected 2 to {MAX_VIEW_NODES} distinct nodes")
        for n in nodes:
            if not isinstance(n, str) or not _NODE.fullmatch(n):
                raise ProtocolError(f"view 'nodes': {n!r} is not a node name")
        if set(self.schemas) != set(nodes):
            raise ProtocolError("view 'schemas': expected one schema per node of the view")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise ProtocolError("view 'size': expected a record count")
        object.__setattr__(self, "nodes", nodes)
        object.__setattr__(self, "schemas", MappingProxyType(dict(self.schemas)))

    def union_schema(self) -> TableSchema:
        return union_schemas(self.schemas, self.nodes)

    def owner(self, name: str, where: str) -> tuple[str, str]:
        """(node, its own column name) of a view column ``node.column``."""
        node, dot, col = name.partition(".")
        if not dot or node not in self.schemas or col not in self.schemas[node].columns:
            known = ", ".join(f"{n}.{c}" for n in self.nodes for c in self.schemas[n].columns)
            raise ConfigError(
                f"{where}: {name!r} is not a column of the view; name columns node.column "
                f"(the view has {known})"
            )
        return node, col

    def owners(self) -> dict[str, str]:
        """Every view column ``node.column`` -> its node."""
        return {f"{n}.{c}": n for n in self.nodes for c in self.schemas[n].columns}

    def check_own(self, node: str, schema: TableSchema, where: str) -> None:
        """Refuse a view whose part for ``node`` is not that node's own schema now."""
        if node not in self.schemas:
            raise ProtocolError(f"{where}: this node is not part of view {self.id[:12]}")
        if self.schemas[node] != schema:
            raise ProtocolError(
                f"{where}: the query plans on a schema of this node's dataset "
                f"{self.dataset!r} that is not its schema now; describe the view again "
                "(fed.intersect) and re-run"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "dataset": self.dataset,
            "nodes": list(self.nodes),
            "schemas": {n: self.schemas[n].to_dict() for n in self.nodes},
            "size": self.size,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ViewRef:
        try:
            schemas = {str(n): TableSchema.from_dict(s) for n, s in dict(data["schemas"]).items()}
            return cls(
                id=data["id"],
                dataset=str(data["dataset"]),
                nodes=tuple(data["nodes"]),
                schemas=schemas,
                size=data["size"],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"signed query 'view': malformed ({exc})") from None
