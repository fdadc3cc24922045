"""The project's foundation: CLI surface, error hierarchy, generated-code drift check."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

from trustspace import errors
from trustspace.cli import main as cli

ROOT = Path(__file__).resolve().parent.parent


def test_help_lists_every_designed_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in ("demo", "node", "aggregator", "ca", "query", "anonymize", "audit"):
        assert f"    {name}" in out


def test_every_subcommand_is_built(capsys: pytest.CaptureFixture[str]) -> None:
    for module in cli.COMMANDS:
        name = module.__name__.rsplit(".", 1)[1]
        with pytest.raises(SystemExit) as exc:
            cli.main([name, "--help"])
        assert exc.value.code == 0, name
        assert f"usage: trustspace {name}" in capsys.readouterr().out


def test_every_error_derives_from_the_base() -> None:
    classes = [
        obj
        for obj in vars(errors).values()
        if isinstance(obj, type)
        and issubclass(obj, Exception)
        and obj.__module__ == errors.__name__
    ]
    assert len(classes) > 5
    assert all(issubclass(cls, errors.TrustspaceError) for cls in classes)


def _load_protos_script() -> object:
    spec = importlib.util.spec_from_file_location("protos_script", ROOT / "scripts" / "protos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_drift_check_fails_after_a_hand_edit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = _load_protos_script()
    shutil.copytree(ROOT / "protos", tmp_path / "protos")
    shutil.copytree(ROOT / "trustspace" / "proto", tmp_path / "trustspace" / "proto")
    for attr, value in {
        "ROOT": tmp_path,
        "PROTO_ROOT": tmp_path / "protos",
        "PROTO_DIR": tmp_path / "protos" / "trustspace" / "proto" / "v1",
        "BIN": Path(sys.executable).parent,
    }.items():
        setattr(script, attr, value)
    assert script.check() == 0  # type: ignore[attr-defined]
    victim = next((tmp_path / "trustspace" / "proto" / "v1").glob("*_pb2.py"))
    victim.write_text(victim.read_text() + "# hand edit\n")
    assert script.check() == 1  # type: ignore[attr-defined]
    err = capsys.readouterr().err
    assert victim.name in err
    assert "make protos" in err
