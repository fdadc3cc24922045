"""Generate the gRPC/protobuf code and type stubs from protos/, or check for drift.

`python scripts/protos.py generate` rewrites trustspace/proto/v1/ from protos/trustspace/proto/v1/;
`python scripts/protos.py check` regenerates into a temporary folder and fails (exit 1) if any
committed generated file differs, is missing or is extra.
"""

from __future__ import annotations

import filecmp
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PROTO_DIR = PROTO_ROOT / "trustspace" / "proto" / "v1"
OUT_REL = Path("trustspace") / "proto" / "v1"
KEEP = {"__init__.py"}
BIN = Path(sys.executable).parent


def _generate(out_root: Path) -> None:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_DIR.glob("*.proto"))
    if not protos:
        sys.exit(f"no .proto files under {PROTO_DIR}")
    (out_root / OUT_REL).mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        # the mypy-protobuf plugins live beside this interpreter, which need not be on PATH
        f"--plugin=protoc-gen-mypy={BIN / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={BIN / 'protoc-gen-mypy_grpc'}",
        *protos,
    ]
    subprocess.run(cmd, check=True, cwd=PROTO_ROOT)


def _generated_files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.is_file() and p.name not in KEEP}


def generate() -> None:
    target = ROOT / OUT_REL
    for name in _generated_files(target) if target.exists() else set():
        (target / name).unlink()
    _generate(ROOT)
    print(f"generated {len(_generated_files(target))} files in {OUT_REL}")


def check() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        fresh_root = Path(tmp)
        _generate(fresh_root)
        fresh = fresh_root / OUT_REL
        committed = ROOT / OUT_REL
        want, have = _generated_files(fresh), _generated_files(committed)
        problems = [f"missing: {OUT_REL / n}" for n in sorted(want - have)]
        problems += [f"extra (no .proto makes it): {OUT_REL / n}" for n in sorted(have - want)]
        problems += [
            f"differs from what protoc generates: {OUT_REL / n}"
            for n in sorted(want & have)
            if not filecmp.cmp(fresh / n, committed / n, shallow=False)
        ]
    if problems:
        print("proto drift check FAILED:", *problems, sep="\n  ", file=sys.stderr)
        print(
            "Generated code must not be edited by hand. Run `make protos` and commit the result.",
            file=sys.stderr,
        )
        return 1
    print(f"proto drift check: {len(want)} generated files match protos/")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in {"generate", "check"}:
        sys.exit("usage: python scripts/protos.py generate|check")
    if sys.argv[1] == "generate":
        generate()
    else:
        sys.exit(check())
