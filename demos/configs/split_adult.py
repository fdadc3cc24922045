"""Split the Adult data set into three partitions, one per organisation, for the walk-through.

Usage: python demos/configs/split_adult.py demos/data/adult/adult.csv OUT_DIR
Writes OUT_DIR/org-a.csv, org-b.csv, org-c.csv (';'-separated, with the header), rows dealt
round-robin so every partition looks like the whole.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    lines = src.read_text(encoding="utf-8").splitlines()
    header, rows = lines[0], lines[1:]
    names = ("org-a", "org-b", "org-c")
    for i, name in enumerate(names):
        part = rows[i :: len(names)]
        (out / f"{name}.csv").write_text("\n".join([header, *part]) + "\n", encoding="utf-8")
        print(f"{out / name}.csv: {len(part)} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
