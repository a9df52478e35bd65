"""The real helm and kubectl binaries (unpacked by scripts/helm.sh) and small wrappers the chart tests share."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "duplex"
HELM_SCRIPT = REPO / "scripts" / "helm.sh"


def wheel_version() -> str:
    """The wheel version scripts/helm.sh unpacks by default (its cache folder is named after it)."""
    found = re.search(r"DUPLEX_HELM_WHEEL_VERSION:-([0-9.]+)", HELM_SCRIPT.read_text())
    assert found, f"{HELM_SCRIPT}: no default DUPLEX_HELM_WHEEL_VERSION"
    return os.environ.get("DUPLEX_HELM_WHEEL_VERSION", found.group(1))


def tool(name: str) -> Path:
    """Path of the cached ``helm`` or ``kubectl``; a clear error naming the set-up script when absent."""
    cache = Path(os.environ.get("DUPLEX_CACHE", Path.home() / ".cache" / "duplex"))
    path = cache / f"helm-{wheel_version()}" / "bin" / name
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(f"{path} is missing: run `bash scripts/setup.sh` (or `bash scripts/helm.sh`) first")
    return path


def run(argv: list[str | Path], check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure (with ``check``) raise with its output, so a test shows what helm said."""
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, argv))} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def helm(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run([tool("helm"), *args], check=check)


def set_args(values: dict[str, str]) -> list[str]:
    return [a for k, v in values.items() for a in ("--set", f"{k}={v}")]


def template(values: dict[str, str] | None = None, release: str = "r", namespace: str = "duplex-system") -> str:
    """``helm template`` output of the chart (CRDs included) as one YAML stream."""
    return helm("template", release, CHART, "-n", namespace, "--include-crds", *set_args(values or {})).stdout


def manifests(stream: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(stream) if d]
