"""The code has one place for each behaviour (issue 12), checked on the source itself.

- no module imports a private name or private module of *another* subpackage (``trustspace.X``
  may use ``trustspace.X._y``; ``trustspace.Y`` may not): each package's public names are its
  interface;
- the secure-aggregation stage names are string literals in exactly one module
  (``trustspace/secagg/stage.py``; docstrings aside): every other module uses ``Stage``;
- ``transport/serde.py`` only converts (protobuf <-> domain): it defines no classes and every
  public function is a conversion.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import trustspace

ROOT = Path(trustspace.__file__).parent
STAGES = {"advertise", "share_keys", "masked_input", "unmask"}


def _modules() -> list[tuple[str, ast.Module]]:
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if not rel.startswith("proto/"):
            out.append((rel, ast.parse(path.read_text(encoding="utf-8"))))
    return out


def _docstrings(tree: ast.Module) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def test_no_private_imports_across_packages() -> None:
    bad = []
    for rel, tree in _modules():
        parts = rel.split("/")
        package = parts[0] if len(parts) > 1 else ""
        for node in ast.walk(tree):
            if not (isinstance(node, ast.ImportFrom) and node.module):
                continue
            mod = node.module.split(".")
            if mod[0] != "trustspace" or len(mod) < 2 or mod[1] == package:
                continue
            private_module = any(m.startswith("_") and not m.startswith("__") for m in mod[2:])
            private_names = [
                a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")
            ]
            # trustspace._files, _config, _adult: the root package's shared helpers
            if private_module or (private_names and len(mod) > 2):
                bad.append(f"{rel}:{node.lineno} from {node.module} import {private_names}")
    assert not bad, "private names of another package imported:\n" + "\n".join(bad)


def test_stage_names_are_spelled_in_one_module() -> None:
    found = {}
    for rel, tree in _modules():
        skip = _docstrings(tree)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and node.value in STAGES
                and id(node) not in skip
            ):
                found.setdefault(rel, []).append(node.value)
    assert set(found) == {"secagg/stage.py"}, found


def test_serde_only_converts() -> None:
    tree = ast.parse((ROOT / "transport" / "serde.py").read_text(encoding="utf-8"))
    classes = [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
    assert not classes
    conversion = re.compile(
        r"^(_.*|.*_(to|from)_(proto|dict)|dumps|loads|loads_dict|int_to_bytes|bytes_to_int"
        r"|paillier_modulus)$"
    )
    funcs = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert funcs and all(conversion.match(f) for f in funcs), [
        f for f in funcs if not conversion.match(f)
    ]
