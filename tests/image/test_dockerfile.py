"""The two builds of the duplex image agree: the Dockerfile (for users) and scripts/image.sh (offline, for the
e2e cluster) install with the same scripts/image-install.sh, and both images start ``duplex`` as the user the
operator's pods run as. ``docker build`` cannot run here, so the Dockerfile is checked as text."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import yaml
from builder_module import image_builder

from duplex.operator.naming import ModelRef
from duplex.operator.render import ApiVersions, render_children
from duplex.operator.render.posture import RUN_AS, TMP_DIR
from duplex.operator.resolve import parse_spec, resolve

ROOT = Path(__file__).resolve().parents[2]
INSTALL = "scripts/image-install.sh"


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def rendered_containers() -> list[dict[str, Any]]:
    """Every duplex container the operator renders (engine, envoy, picker, agent) for a model running them all."""
    manifests = render_children(
        ModelRef(name="talk", namespace="prod", uid=""),
        resolve(parse_spec({"engine": {"shards": 2}, "agent": {"workers": 1}})),
        ApiVersions(),
    )
    pods = [m["spec"]["template"]["spec"] for m in manifests if m["kind"] in ("StatefulSet", "Deployment")]
    return [c for pod in pods for c in pod["containers"] if c["name"] != "redis"]


def test_both_builds_install_with_the_one_install_script() -> None:
    steps = dockerfile()
    runs = " ".join(args for word, args in steps if word == "RUN")
    # the Dockerfile runs each phase of image-install.sh: wheels and project on the builder, install in the image
    for phase in ("wheels", "project", "install"):
        assert re.search(rf"image-install\.sh {phase} ", runs), phase
    copies = [args for word, args in steps if word == "COPY"]
    assert any(args.split()[0] == INSTALL for args in copies), copies
    # the offline build runs the same file for the same phases
    builder = image_builder()
    assert builder.INSTALL == ROOT / INSTALL
    source = (ROOT / "scripts" / "image.py").read_text()
    for phase in ("wheels", "project", "install", "debs"):
        assert f'"{phase}"' in source, phase
    assert "scripts/image.py" in (ROOT / "scripts" / "image.sh").read_text()


def test_dockerfile_final_stage_has_the_offline_images_two_layers() -> None:
    steps = dockerfile()
    final = steps[max(i for i, (word, _) in enumerate(steps) if word == "FROM") :]
    phases = [re.search(r"image-install\.sh (\S+)", args).group(1) for word, args in final if word == "RUN"]  # type: ignore[union-attr]
    # the dependencies first (a layer a source change keeps), then the project alone on top
    assert phases == ["install", "install-project"]
    source = (ROOT / "scripts" / "image.py").read_text()
    assert source.index('"install", "/tmp/image-build/wheels"') < source.index('"install-project"')


def test_dockerfile_starts_from_the_public_slim_bookworm_python() -> None:
    froms = [args for word, args in dockerfile() if word == "FROM"]
    args = dict(a.split("=", 1) for word, a in dockerfile() if word == "ARG" and "=" in a)
    bases = {f.split()[0].replace("${BASE}", args["BASE"]) for f in froms}
    assert bases == {"python:3.11-slim-bookworm"}
    # both builds are cp311 on bookworm, so the offline build's wheelhouse fits either
    assert image_builder().SUITE == "bookworm"


def test_image_entrypoint_is_the_command_the_operator_renders() -> None:
    (entrypoint,) = [args for word, args in dockerfile() if word == "ENTRYPOINT"]
    containers = rendered_containers()
    assert {c["name"] for c in containers} >= {"engine", "envoy", "picker", "agent"}
    for container in containers:
        assert container["command"] == json.loads(entrypoint), container["name"]
    # the chart's operator Deployment starts the same command from the same image
    chart = (ROOT / "charts" / "duplex" / "templates" / "operator-deployment.yaml").read_text()
    assert re.search(r"command: \[(\w+)\]", chart).group(1) == json.loads(entrypoint)[0]  # type: ignore[union-attr]
    # the offline build sets the same entrypoint in its OCI archive (tests/image/test_image.py reads it back)
    assert image_builder().ENTRYPOINT == json.loads(entrypoint)


def test_image_user_and_home_match_the_rendered_security_context() -> None:
    steps = dockerfile()
    (user,) = [args for word, args in steps if word == "USER"]
    assert user == f"{RUN_AS}:{RUN_AS}"
    for container in rendered_containers():
        ctx = container["securityContext"]
        assert (ctx["runAsUser"], ctx["runAsGroup"], ctx["readOnlyRootFilesystem"]) == (RUN_AS, RUN_AS, True)
    env = dict(kv.split("=", 1) for word, args in steps if word == "ENV" for kv in shlex.split(args))
    # HOME is the one writable directory of a read-only root filesystem: the /tmp emptyDir
    assert env["HOME"] == TMP_DIR
    assert image_builder().POD_UID == RUN_AS
    # the install script's passwd entry (used by the offline image, which sets no ENV) has the same uid and home
    script = (ROOT / INSTALL).read_text()
    assert f"POD_UID={RUN_AS}" in script
    assert f":{TMP_DIR}:" in script


def test_dockerignore_keeps_the_virtualenv_and_git_out_of_the_build_context() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv"} <= ignored
    # but not what the wheel build reads
    built = {"pyproject.toml", "README.md", "scripts", "duplex", "model", "serving", "operator", "loadtest"}
    assert not built & ignored


def test_install_script_lists_only_runtime_debian_packages() -> None:
    debs = subprocess.run(["sh", str(ROOT / INSTALL), "debs"], check=True, capture_output=True, text=True)
    packages = set(debs.stdout.split())
    assert "python3" in packages
    assert not packages & {"gcc", "build-essential", "python3-dev", "python3-pip", "redis-server", "espeak-ng"}


def test_image_installs_the_upstream_moshi_package_as_the_host_set_up_does() -> None:
    """Both images carry the Moshi family's model library at the version set-up installs on the host, without
    its dependencies (its metadata caps torch below the project's), and the ``moshi`` extra's imports."""
    install = (ROOT / INSTALL).read_text()
    pin = re.search(r'^MOSHI="(moshi==[0-9.]+)"$', install, re.M)
    assert pin is not None, "image-install.sh pins moshi"
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert f"--no-deps {pin.group(1)}" in setup
    assert re.search(r'pip wheel -q --no-deps --wheel-dir "\$out" "\$MOSHI"', install)
    assert '"$TORCH" "$src[moshi]"' in install  # the extra's imports are wheeled with the dependencies


def test_install_script_names_the_bad_command() -> None:
    proc = subprocess.run(["sh", str(ROOT / INSTALL), "bake"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "unknown command 'bake'" in proc.stderr


def test_chart_default_image_is_the_tag_the_build_produces() -> None:
    values = yaml.safe_load((ROOT / "charts" / "duplex" / "values.yaml").read_text())
    chart = yaml.safe_load((ROOT / "charts" / "duplex" / "Chart.yaml").read_text())
    builder = image_builder()
    assert f"{values['image']['repository']}:{chart['appVersion']}" == f"duplex:{builder.version()}"


def test_every_package_folder_is_in_the_wheel() -> None:
    """A folder with an ``__init__.py`` that pyproject's ``packages`` does not list is left out of the wheel, hence
    out of the image (where ``duplex`` then fails to import it)."""
    import tomllib

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    found = set()
    for package, folder in setuptools["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            found.add(".".join([package, *relative.parts]))
    assert {"duplex.serving.envoy", "duplex.serving.picker"} <= found
    assert not found - listed, f"packages not in pyproject's [tool.setuptools] packages: {sorted(found - listed)}"
