"""``duplex kserve`` refusals that come before any model or port: exit 2 with a message naming the flag."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from duplex.cli import app


def test_a_model_dir_without_exactly_one_checkpoint_is_refused(tmp_path: Path) -> None:
    runner = CliRunner()
    out = runner.invoke(app, ["kserve", f"--model-dir={tmp_path}", "--http-port=0", "--grpc-port=0"])
    assert out.exit_code == 2
    assert f"--model-dir {tmp_path}: expected exactly one *.safetensors checkpoint, found none" in out.output
    (tmp_path / "a.safetensors").write_bytes(b"")
    (tmp_path / "b.safetensors").write_bytes(b"")
    out = runner.invoke(app, ["kserve", f"--model-dir={tmp_path}", "--http-port=0", "--grpc-port=0"])
    assert out.exit_code == 2 and "found a.safetensors, b.safetensors" in out.output


def test_a_bad_engine_setting_names_the_field() -> None:
    out = CliRunner().invoke(app, ["kserve", "--set", "engine.chunk_ms=5"])
    assert out.exit_code == 2 and "engine.chunk_ms" in out.output


def test_a_checkpoint_that_is_not_safetensors_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"not a checkpoint")
    out = CliRunner().invoke(app, ["kserve", f"--model-dir={tmp_path}", "--set", "engine.metrics_port=0"])
    assert out.exit_code == 2 and "model.safetensors is not a readable safetensors file" in out.output
