"""Imports the load driver of ``benchmarks/load.py`` for the load tests (one copy of the code)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "load.py"


def load_module() -> Any:
    name = "trustspace_benchmark_load"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
