"""PSI anchors for benchmarks/psi.py: SecretFlow libpsi's ECDH (``spu``) and openmined-psi.

    spu_ecdh(100_000)        -> {"seconds": ..., "intersection": ..., ...} or {"skipped": reason}
    openmined(100_000)       -> {"seconds": ..., "bytes_client_to_server": ..., ...}

Both use 16-byte random identifiers (hex), two sets of ``n`` with ``overlap`` of them common.

``spu==0.9.5`` and ``openmined-psi==2.0.6`` cannot share the project's environment: both pin
``protobuf==6.30.2`` (the project needs >= 6.31 for its generated code) and spu also pins
``numpy==1.26.4`` and jax 0.4.34. So each anchor runs in-process when its package imports, and
otherwise in a separate interpreter, the one named by ``TRUSTSPACE_PSI_ANCHORS_PYTHON`` or
``.venv-anchors/bin/python`` at the repository root (``make anchors-venv`` builds it from
``benchmarks/requirements-psi-anchors.txt``), by running this file as a script
(``python benchmarks/_psi_anchors.py spu|openmined N OVERLAP`` prints one JSON object). An
anchor whose package is nowhere to be had returns ``{"skipped": reason}``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ENV_PYTHON = "TRUSTSPACE_PSI_ANCHORS_PYTHON"
TIMEOUT_S = 3600


def make_sets(n: int, overlap: float = 0.5) -> tuple[list[str], list[str]]:
    """Two sets of ``n`` distinct 16-byte random ids (hex); ``overlap * n`` are common."""
    common = int(n * overlap)
    shared = [os.urandom(16).hex() for _ in range(common)]
    a = shared + [os.urandom(16).hex() for _ in range(n - common)]
    b = [os.urandom(16).hex() for _ in range(n - common)] + shared
    return a, b


def _anchor_python() -> str | None:
    named = os.environ.get(ENV_PYTHON)
    if named:
        return named
    default = ROOT / ".venv-anchors" / "bin" / "python"
    return str(default) if default.exists() else None


def _elsewhere(which: str, n: int, overlap: float, reason: str) -> dict[str, Any]:
    python = _anchor_python()
    if python is None:
        return {"skipped": f"{reason}; and no anchor interpreter ({ENV_PYTHON} or .venv-anchors)"}
    proc = subprocess.run(
        [python, str(Path(__file__).resolve()), which, str(n), str(overlap)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        return {"skipped": f"the anchor interpreter {python} failed: {tail[0]}"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]  # spu also logs
    if not lines:
        return {"skipped": f"the anchor interpreter {python} printed no result"}
    out: dict[str, Any] = json.loads(lines[-1])
    out["interpreter"] = python
    return out


def _spu_run(n: int, overlap: float) -> dict[str, Any]:
    import spu
    import spu.libspu.link as link
    import spu.psi as psi

    a, b = make_sets(n, overlap)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for rank, ids in enumerate((a, b)):
            p = Path(tmp) / f"in{rank}.csv"
            p.write_text("id\n" + "\n".join(ids) + "\n", encoding="ascii")
            paths.append(p)
        desc = link.Desc()
        desc.id = "psi-anchor"
        for rank in range(2):
            desc.add_party(f"party{rank}", "127.0.0.1:0")  # memory link: unused
        lctxs = [link.create_mem(desc, rank) for rank in range(2)]
        reports: list[Any] = [None, None]
        errors: list[BaseException] = []

        def party(rank: int) -> None:
            try:
                config = psi.PsiExecuteConfig(
                    protocol_conf=psi.PsiProtocolConfig(
                        protocol=psi.PsiProtocol.PROTOCOL_ECDH,
                        receiver_rank=0,
                        broadcast_result=True,
                        ecdh_params=psi.EcdhParams(curve=psi.EllipticCurveType.CURVE_25519),
                    ),
                    input_params=psi.InputParams(
                        path=str(paths[rank]), selected_keys=["id"], keys_unique=True
                    ),
                    output_params=psi.OutputParams(
                        path=str(Path(tmp) / f"out{rank}.csv"), disable_alignment=False
                    ),
                )
                reports[rank] = psi.psi_execute(config, lctxs[rank])
            except BaseException as exc:  # re-raised by the caller after join
                errors.append(exc)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=party, args=(r,)) for r in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return {
        "seconds": seconds,
        "intersection": int(reports[0].intersection_count),
        "n": n,
        "overlap": overlap,
        "protocol": "ECDH, CURVE_25519, in-process (two threads, memory link), aligned output",
        "version": getattr(spu, "__version__", "?"),
    }


def spu_ecdh(n: int, overlap: float = 0.5) -> dict[str, Any]:
    """SecretFlow libpsi's ECDH-PSI (Curve25519) between two in-process parties, CSV in/out."""
    try:
        import spu.psi  # noqa: F401
    except ImportError as exc:
        return _elsewhere("spu", n, overlap, f"spu does not import here ({exc})")
    return _spu_run(n, overlap)


def _openmined_run(n: int, overlap: float) -> dict[str, Any]:
    import private_set_intersection.python as psi

    a, b = make_sets(n, overlap)  # a: the client's set, b: the server's
    t0 = time.perf_counter()
    client = psi.client.CreateWithNewKey(True)
    server = psi.server.CreateWithNewKey(True)
    setup = server.CreateSetupMessage(1e-9, len(a), b, psi.DataStructure.RAW)
    request = client.CreateRequest(a)
    response = server.ProcessRequest(request)
    common = client.GetIntersection(setup, response)
    seconds = time.perf_counter() - t0
    gcs = server.CreateSetupMessage(1e-9, len(a), b, psi.DataStructure.GCS)
    return {
        "seconds": seconds,
        "intersection": len(common),
        "n": n,
        "overlap": overlap,
        "bytes_client_to_server": len(request.SerializeToString()),
        "bytes_server_to_client": len(response.SerializeToString())
        + len(setup.SerializeToString()),
        "bytes_setup_raw": len(setup.SerializeToString()),
        "bytes_setup_gcs": len(gcs.SerializeToString()),
        "protocol": "ECDH P-256, reveal_intersection, raw setup, full run (keys to result)",
        "version": getattr(psi, "__version__", "2.0.6"),
    }


def openmined(n: int, overlap: float = 0.5) -> dict[str, Any]:
    """openmined-psi's full run (client and server in one process), with the bytes each way."""
    try:
        import private_set_intersection.python  # noqa: F401
    except ImportError as exc:
        return _elsewhere("openmined", n, overlap, f"openmined-psi does not import here ({exc})")
    return _openmined_run(n, overlap)


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in ("spu", "openmined"):
        print("usage: _psi_anchors.py spu|openmined N OVERLAP", file=sys.stderr)
        return 2
    which, n, overlap = argv[0], int(argv[1]), float(argv[2])
    run = _spu_run if which == "spu" else _openmined_run
    print(json.dumps(run(n, overlap)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
