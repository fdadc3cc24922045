"""Data safety: nothing a node received or computed for a refused or failed query is released
later, and anonymization outputs are never left looking complete after a failure or a crash."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _reliability import record

from trustspace.api import Federation
from trustspace.errors import PolicyError, ProtocolError
from trustspace.secagg import Stage
from trustspace.stats import Query, start
from trustspace.transport import types
from trustspace.transport.ca import Credentials, issue
from trustspace.transport.clients import NodeClient
from trustspace.transport.signing import new_query


def test_refused_query_leaves_nothing_to_continue(tmp_path: Path) -> None:
    """A query refused at its advertise stage creates no session: later stages for that
    session id (a retry by a malicious aggregator) find nothing to answer."""
    rng = np.random.default_rng(5)  # test data only
    df = pd.DataFrame({"age": rng.integers(18, 90, 40)})
    policy = {"min_group_size": 3, "rules": [{"analysts": ["alice"], "operations": ["count"]}]}
    with Federation.local({"n1": df, "n2": df}, policy=policy, workdir=tmp_path) as fed:
        node = fed.nodes["n1"]
        client = NodeClient(
            "n1", node.address, Credentials.from_dir(tmp_path / "ca" / "aggregator")
        )
        rnd = start(Query("sum", "default", "age"), node.engine.schema("default"), 3).next_round()
        assert rnd is not None
        setup = types.SecAggSetup(os.urandom(32), (1, 2), rnd.size)
        ref = types.RoundRef(0, 3, None, rnd)
        for analyst, op in (("mallory", "count"), ("alice", "sum")):
            creds = Credentials.from_dir(issue(tmp_path / "ca", analyst, "analyst"))
            signed = new_query(creds, op, "default", ("age",) if op == "sum" else ())
            with pytest.raises(PolicyError):
                client.secagg_step(
                    types.SecAggStep(signed, setup, Stage.ADVERTISE, (), ref, 1), timeout=10
                )
            for stage in (Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASK):
                with pytest.raises(ProtocolError, match="no secure-aggregation session"):
                    client.secagg_step(
                        types.SecAggStep(signed, setup, stage, (b"x",), None, 1), timeout=10
                    )
        client.close()
    record(
        "data safety",
        "refused query (unknown analyst; operation not allowed), then its later stages",
        "PERMISSION_DENIED, then no session to continue: nothing computed is released",
        tries=2,
    )


_CRASH = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    {imports}
    os.fsync = lambda fd: os._exit(9)   # the process dies after writing, before the rename
    {call}
    """
)


@pytest.mark.parametrize(
    ("label", "imports", "call"),
    [
        (  # the writer of the node's AnonApply output and of certificates and keys
            "node AnonApply output",
            "from trustspace._files import write_atomic",
            "write_atomic(Path(sys.argv[1]), b'age\\n' * 100000)",
        ),
        (  # the writer of `trustspace anonymize -o` (streamed text)
            "trustspace anonymize -o",
            "from trustspace._files import write_atomic",
            "write_atomic(sys.argv[1], lambda fh: fh.write('age\\n' * 100000), text=True)",
        ),
    ],
)
def test_crash_while_writing_output_leaves_no_complete_looking_file(
    tmp_path: Path, label: str, imports: str, call: str
) -> None:
    target = tmp_path / "out.csv"
    code = _CRASH.format(imports=imports, call=call)
    proc = subprocess.run(
        [sys.executable, "-c", code, str(target)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 9, proc.stderr
    assert not target.exists()  # only a hidden temporary file may remain
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert all(n.startswith(".out.csv.") for n in leftovers), leftovers
    record(
        "data safety",
        f"process killed while writing the {label}",
        "no file at the output path (a hidden temporary file at most)",
    )


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from trustspace._files import write_atomic

    def boom(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        write_atomic(tmp_path / "a.csv", b"x" * 1000)
    with pytest.raises(OSError):
        write_atomic(str(tmp_path / "b.csv"), lambda fh: fh.write("x" * 1000), text=True)
    assert list(tmp_path.iterdir()) == []
    record(
        "data safety", "disk full while writing an anonymization output", "OSError, no file left"
    )
