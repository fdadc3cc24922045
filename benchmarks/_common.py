"""What every benchmark records beside its numbers: the machine and the versions."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "unknown"
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        kb = int(meminfo.read_text().split()[1])
        mem = f"{kb / 2**20:.1f} GiB"
    return {"platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(), "memory": mem}


def versions(*packages: str) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("trustspace", *packages):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
