"""The suite's spread over pytest-xdist workers (tests/xdist_groups.py, tests/conftest.py), checked on real
collections and a real two-worker run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from xdist_groups import GROUPS, group_of

ROOT = Path(__file__).resolve().parents[2]


def pytest_run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}  # a run of its own, not a worker
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("prefix", [p for prefixes in GROUPS.values() for p in prefixes])
def test_every_grouped_path_exists(prefix: str) -> None:
    """A renamed module or folder would silently leave its group: each entry names what is there."""
    path = ROOT / prefix
    assert path.is_dir() if prefix.endswith("/") else path.is_file(), prefix


@pytest.mark.parametrize(
    ("path", "group"),
    [
        ("tests/e2e/test_platform.py", "node"),
        ("tests/image/test_image.py", "node"),
        ("tests/image/test_dockerfile.py", "tests/image/test_dockerfile.py"),
        ("tests/web/test_page.py", "realtime-load"),
        ("tests/loadtest/test_live_eval.py", "realtime-load"),
        ("tests/model/test_moshi_served.py", "model-cpu"),
        ("tests/model/test_config.py", "tests/model/test_config.py"),
        ("tests/loadtest/test_report.py", "tests/loadtest/test_report.py"),
        ("tests/e2e_other/test_x.py", "tests/e2e_other/test_x.py"),  # a folder prefix matches whole names only
    ],
)
def test_group_of(path: str, group: str) -> None:
    assert group_of(path) == group


def test_grouped_modules_come_first_and_the_node_teardown_last() -> None:
    r = pytest_run(
        "--collect-only",
        "-q",
        "tests/loadtest/test_report.py",
        "tests/web/test_page.py",
        "tests/image/test_dockerfile.py",
        "tests/e2e/test_node.py",
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    modules = [line.split("::")[0] for line in r.stdout.splitlines() if "::" in line]
    runs = [m for i, m in enumerate(modules) if i == 0 or modules[i - 1] != m]
    assert runs == [
        "tests/e2e/test_node.py",  # "node" first
        "tests/web/test_page.py",  # then "realtime-load"
        "tests/loadtest/test_report.py",  # then the rest in the order given
        "tests/image/test_dockerfile.py",
        "tests/e2e/test_node.py",  # its teardown test runs last (tests/e2e/conftest.py)
    ]
    assert r.stdout.splitlines()[len(modules) - 1].endswith("::test_teardown_leaves_nothing")


def test_two_workers_run_each_module_whole_on_one_worker() -> None:
    """The arguments of scripts/test.sh: every test of a module on one worker, both workers busy."""
    modules = ["tests/loadtest/test_report.py", "tests/loadtest/test_listener.py", "tests/serving/test_planner.py"]
    r = pytest_run("-n", "2", "--dist", "loadgroup", "--no-loadscope-reorder", "-v", *modules)
    assert r.returncode == 0, r.stdout[-4000:]
    ran = re.findall(r"\[(gw\d)\] \[\s*\d+%\] PASSED (tests/\S+?\.py)::\S+@(\S+)", r.stdout)
    assert len(ran) == int(re.search(r"(\d+) passed", r.stdout).group(1))  # type: ignore[union-attr]
    workers = {module: {w for w, m, _ in ran if m == module} for module in modules}
    assert all(len(w) == 1 for w in workers.values()), workers
    assert set().union(*workers.values()) == {"gw0", "gw1"}
    assert {m: g for _, m, g in ran} == {m: m for m in modules}  # each module its own group
