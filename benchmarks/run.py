"""Run every benchmark (quick or full mode), then render the summary table and charts.

    python benchmarks/run.py --quick     # a few minutes in all (make bench)
    python benchmarks/run.py             # the full set (make bench-full)

Each benchmark script writes its own JSON under benchmarks/results/; a failing benchmark is
reported and the others still run; the exit status is non-zero if any failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = [
    "paillier.py",
    "secagg.py",
    "stats.py",
    "anon.py",
    "contention.py",
    "dp_sampler.py",
    "dp.py",
    "regression.py",
    "psi.py",
    "sources.py",
    "synth.py",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="quick mode (a few minutes in all)")
    parser.add_argument("--only", nargs="*", choices=SCRIPTS, help="run only these scripts")
    args = parser.parse_args()
    failed: list[str] = []
    for name in args.only or SCRIPTS:
        script = HERE / name
        if not script.exists():
            print(f"== {name}: not present, skipped")
            continue
        print(f"== {name} ({'quick' if args.quick else 'full'} mode)", flush=True)
        start = time.perf_counter()
        cmd = [sys.executable, str(script)] + (["--quick"] if args.quick else [])
        code = subprocess.call(cmd, cwd=HERE.parent)
        print(f"== {name}: exit {code} after {time.perf_counter() - start:.1f} s", flush=True)
        if code != 0:
            failed.append(name)
    summary = HERE / "summary.py"
    if summary.exists():
        subprocess.call([sys.executable, str(summary)], cwd=HERE.parent)
    if failed:
        print("benchmarks that failed: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
