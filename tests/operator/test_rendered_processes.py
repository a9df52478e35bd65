"""What the operator renders is what the processes run: the engine ranks started from the rendered
``engine.json`` serve ``/metrics`` on the rendered metrics port, with the HPA's metric in it; every rendered
``DUPLEX_*`` variable and ConfigMap file is read by the process it is given to."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from duplex_controlplane import ControlPlane
from typer.testing import CliRunner

from duplex.cli import app
from duplex.operator.kube import Kube
from duplex.operator.naming import CONFIG_DIR, ModelRef
from duplex.operator.render import ApiVersions, render_children
from duplex.operator.render.common import Manifest
from duplex.operator.resolve import parse_spec, resolve
from duplex.serving.cli import CONFIG_SECTIONS
from duplex.serving.ports import free_port
from duplex.serving.settings import load_section

REF = ModelRef(name="talk", namespace="prod", uid="0f0e-uid")
DUPLEX = [sys.executable, "-c", "from duplex.cli import main; main()"]

SPECS: list[dict[str, Any]] = [
    {},
    {"engine": {"shards": 4}, "replicas": 3, "autoscaling": {"enabled": True, "maxReplicas": 6}},
    {"gateway": {"replicas": 2, "authSecret": "keys", "tlsSecret": "tls"}},
    {"gateway": {"httpPort": 8088, "authSecret": "keys", "tlsSecret": "tls"}},
    {"agent": {"workers": 2}},
    {"agent": {"workers": 1, "redis": {"managed": False, "urlSecret": "redis-url"}}},
    {
        "model": {"preset": "tml-interaction-small", "dtype": "bfloat16"},
        "engine": {"shards": "auto", "gpusPerShard": 1, "gpuMemoryGib": 80, "maxSessions": 32},
    },
]


def render(raw: dict[str, Any]) -> list[Manifest]:
    return render_children(REF, resolve(parse_spec(raw)), ApiVersions())


def containers(manifests: list[Manifest]) -> list[dict[str, Any]]:
    return [
        c
        for m in manifests
        if m["kind"] in ("StatefulSet", "Deployment")
        for c in m["spec"]["template"]["spec"]["containers"]
    ]


def envvars_the_cli_reads(subcommand: str) -> set[str]:
    """Environment variables ``duplex SUBCOMMAND`` declares on its options (click's ``envvar``)."""
    group = typer.main.get_command(app)
    assert hasattr(group, "commands")
    params = group.commands[subcommand].params
    return {name for p in params for name in ([p.envvar] if isinstance(p.envvar, str) else p.envvar or [])}


@pytest.mark.parametrize("raw", SPECS, ids=lambda r: json.dumps(r, sort_keys=True))
def test_every_rendered_duplex_variable_is_read(raw: dict[str, Any]) -> None:
    """Read = the kubelet expands it into the container's own args / env (``$(NAME)``), or the CLI declares it."""
    for c in containers(render(raw)):
        if c.get("command") != ["duplex"]:
            assert not [e for e in c.get("env", []) if e["name"].startswith("DUPLEX_")]
            continue
        subcommand = c["args"][0]
        expanded = " ".join([*c["args"], *(e.get("value", "") for e in c.get("env", []))])
        for e in c.get("env", []):
            name = e["name"]
            assert f"$({name})" in expanded or name in envvars_the_cli_reads(subcommand), (
                f"{c['name']}: {name} is rendered but `duplex {subcommand}` never reads it"
            )


@pytest.mark.parametrize("raw", SPECS, ids=lambda r: json.dumps(r, sort_keys=True))
def test_every_config_file_is_loaded_by_its_command(raw: dict[str, Any], tmp_path: Path) -> None:
    out = render(raw)
    data = next(m for m in out if m["kind"] == "ConfigMap")["data"]
    given: dict[str, str] = {}  # file -> the subcommand whose --config names it
    for c in containers(out):
        args = c.get("args", [])
        if c.get("command") == ["duplex"] and "--config" in args:
            path = args[args.index("--config") + 1]
            assert {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True} in c["volumeMounts"]
            given[path.removeprefix(f"{CONFIG_DIR}/")] = args[0]
    assert set(data) == set(given), "every ConfigMap file is some command's --config, and only those"
    for key, text in data.items():
        command = given[key]
        sections = json.loads(text)
        assert set(sections) <= set(CONFIG_SECTIONS[command]), f"{key}: sections `duplex {command}` ignores"
        file = tmp_path / key
        file.write_text(text)
        for name, model in CONFIG_SECTIONS[command].items():
            load_section(file, [], name, model)  # raises on any field the command would reject


def redis_env(c: dict[str, Any]) -> dict[str, Any]:
    """The one variable carrying the Redis URL (or the file holding it) to a container."""
    (e,) = [e for e in c["env"] if e["name"] in ("DUPLEX_REDIS_URL", "DUPLEX_REDIS_URL_FILE")]
    return e


def local_redis_args(c: dict[str, Any], url: str, tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """The container's args and its Redis variable, run here: the URL (or, for a mounted URL Secret, a file
    holding it at the mounted path's place under ``tmp_path``) replaces the in-cluster one; the ConfigMap's
    files are under ``tmp_path`` too."""
    e = redis_env(c)
    value = url
    if e["name"] == "DUPLEX_REDIS_URL_FILE":
        mounts = [m for m in c["volumeMounts"] if e["value"].startswith(m["mountPath"] + "/")]
        mount = max(mounts, key=lambda m: len(m["mountPath"]))  # the innermost mount holds the file
        assert mount["readOnly"] is True and mount["name"] == "redis-url"
        file = tmp_path / e["value"].removeprefix(f"{CONFIG_DIR}/")
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(url + "\n")  # as `kubectl create secret generic --from-file` keeps a trailing newline
        value = str(file)
    args = [a.replace(f"$({e['name']})", value) for a in c["args"]]
    args = [str(tmp_path / a.removeprefix(f"{CONFIG_DIR}/")) if a.startswith(f"{CONFIG_DIR}/") else a for a in args]
    return args, {e["name"]: value}


@pytest.mark.parametrize("raw", [r for r in SPECS if r.get("agent", {}).get("workers")], ids=lambda r: json.dumps(r))
def test_agent_deployment_runs_duplex_agent_with_args_it_accepts(raw: dict[str, Any], tmp_path: Path) -> None:
    """The rendered worker command parses (``duplex agent`` takes every flag), its config names this model's
    stream prefix, and the engine reads the same prefix and gets the same Redis variable (the URL, or the file
    a URL Secret is mounted as)."""
    out = render(raw)
    by_name = {c["name"]: c for c in containers(out)}
    agent, engine = by_name["agent"], by_name["engine"]
    assert agent["command"] == ["duplex"] and agent["args"][0] == "agent"
    data = next(m for m in out if m["kind"] == "ConfigMap")["data"]
    (tmp_path / "agent.json").write_text(data["agent.json"])
    args, _ = local_redis_args(agent, "redis://127.0.0.1:6379/0", tmp_path)
    group = typer.main.get_command(app)
    assert hasattr(group, "commands")
    ctx = group.commands["agent"].make_context("agent", args[1:])  # raises on a flag `duplex agent` does not take
    if redis_env(agent)["name"] == "DUPLEX_REDIS_URL_FILE":
        assert Path(ctx.params["redis_url_file"]).read_text() == "redis://127.0.0.1:6379/0\n"
    else:
        assert ctx.params["redis_url"] == "redis://127.0.0.1:6379/0"
    prefix = "duplex:prod:talk"
    assert json.loads(data["agent.json"])["agent"]["stream_prefix"] == prefix
    assert json.loads(data["engine.json"])["engine"]["agent_stream_prefix"] == prefix
    assert redis_env(engine) == redis_env(agent)
    assert redis_env(engine)["name"] in envvars_the_cli_reads("engine")  # the agent expands it into its args
    assert not [e for c in (agent, engine) for e in c["env"] if "valueFrom" in e]  # no Secret as a variable


def test_render_cli_prints_the_children_offline(tmp_path: Path) -> None:
    import kubernetes_validate

    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "duplex.ai/v1alpha1",
                "kind": "DuplexModel",
                "metadata": {"name": "talk", "namespace": "ignored"},
                "spec": SPECS[1],
            }
        )
    )
    runner = CliRunner()
    out = runner.invoke(app, ["render", "-f", str(manifest), "-n", "prod"])
    assert out.exit_code == 0, out.output
    docs = list(yaml.safe_load_all(out.stdout))
    expected = render(SPECS[1])
    for m in expected:
        del m["metadata"]["ownerReferences"]  # offline there is no uid to point at
    assert docs == expected
    version = kubernetes_validate.latest_version()
    for d in docs:
        kubernetes_validate.validate(d, version, strict=True)
    old = runner.invoke(app, ["render", "-f", str(manifest), "--kube-version", "1.20"])
    assert old.exit_code == 0, old.output
    kinds = {d["kind"]: d["apiVersion"] for d in yaml.safe_load_all(old.stdout)}
    assert kinds["PodDisruptionBudget"] == "policy/v1beta1"
    assert kinds["HorizontalPodAutoscaler"] == "autoscaling/v2beta2"
    assert {d["metadata"]["namespace"] for d in yaml.safe_load_all(old.stdout)} == {"ignored"}


@pytest.mark.parametrize(
    ("doc", "text"),
    [
        (
            {
                "apiVersion": "duplex.ai/v1alpha1",
                "kind": "DuplexModel",
                "metadata": {"name": "m"},
                "spec": {"engine": {"shards": 3}},
            },
            "spec.engine.shards",
        ),
        (
            {
                "apiVersion": "duplex.ai/v1alpha1",
                "kind": "DuplexModel",
                "metadata": {"name": "m"},
                "spec": {"engine": {"chunkMs": 20}},
            },
            "spec.engine.chunkMs",
        ),
        (
            {
                "apiVersion": "duplex.ai/v1alpha1",
                "kind": "DuplexModel",
                "metadata": {"name": "m"},
                "spec": {"engine": {"backend": "tensorrt-llm", "gpusPerShard": 1}},
            },
            "spec.engine.backend",
        ),
        ({"apiVersion": "duplex.ai/v1alpha1", "kind": "DuplexModel", "metadata": {}}, "metadata.name"),
        ({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "m"}}, "kind DuplexModel"),
    ],
)
def test_render_cli_names_the_bad_field(doc: dict[str, Any], text: str, tmp_path: Path) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    out = CliRunner().invoke(app, ["render", "-f", str(manifest)])
    assert out.exit_code == 2
    assert text in out.stderr and "Traceback" not in out.output


# --- the processes themselves --------------------------------------------------------------------------


def scrape(port: int, deadline_s: float = 120.0, proc: subprocess.Popen[bytes] | None = None) -> str:
    """/metrics of a starting process: polled until it answers (or the process dies, or the deadline)."""
    end = time.monotonic() + deadline_s
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return str(r.read().decode())
        except (urllib.error.URLError, ConnectionError):
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"process exited {proc.returncode}") from None
            if time.monotonic() > end:
                raise
            time.sleep(0.2)  # poll interval of the deadline loop, not a stand-in for synchronisation


def run_probe(
    probe: dict[str, Any], ports: dict[str, int], hostname: str = "", deadline_s: float = 0.0
) -> subprocess.CompletedProcess[str]:
    """Run a rendered probe as the kubelet would, the rendered ports mapped to the local ones (``ports``:
    rendered port number or name -> local port). ``exec`` runs its command (``python3`` = this interpreter,
    which imports this checkout) with ``$HOSTNAME`` = the pod name; ``tcpSocket`` connects; ``httpGet`` GETs.
    With ``deadline_s``, polled until it passes or the deadline (a starting process)."""
    end = time.monotonic() + deadline_s
    while True:
        result = _probe_once(probe, ports, hostname)
        if result.returncode == 0 or time.monotonic() > end:
            return result
        time.sleep(0.2)  # poll interval of the deadline loop, not a stand-in for synchronisation


def _local(arg: str, ports: dict[str, int]) -> str:
    """A rendered port argument (``7070``, ``127.0.0.1:7070``) mapped to the local port."""
    host, sep, port = arg.rpartition(":")
    if sep and port in ports:
        return f"{host}:{ports[port]}"
    return str(ports.get(arg, arg))


def _probe_once(probe: dict[str, Any], ports: dict[str, int], hostname: str) -> subprocess.CompletedProcess[str]:
    if "exec" in probe:
        command = list(probe["exec"]["command"])
        if command[0] == "python3":
            command[0] = sys.executable
        command = [_local(a, ports) for a in command]
        env = {**os.environ, "HOSTNAME": hostname}
        return subprocess.run(command, capture_output=True, text=True, timeout=30, env=env)
    kind = "tcpSocket" if "tcpSocket" in probe else "httpGet"
    port = ports[str(probe[kind]["port"])]
    try:
        if kind == "tcpSocket":
            socket.create_connection(("127.0.0.1", port), 3).close()
        else:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{probe['httpGet']['path']}", timeout=5) as r:
                r.read()
    except OSError as e:
        return subprocess.CompletedProcess([kind, str(port)], 1, "", str(e))
    return subprocess.CompletedProcess([kind, str(port)], 0, "", "")


def test_every_rank_serves_the_hpa_metric_on_the_rendered_port(
    tmp_path: Path, kube: Kube, kube_cluster: ControlPlane
) -> None:
    """... and every rendered probe of the engine ranks and of the front pod passes against the started
    processes (a probe that cannot pass would restart or unready every pod)."""
    out = render({"engine": {"shards": 2}, "autoscaling": {"enabled": True}})
    hpa = next(m for m in out if m["kind"] == "HorizontalPodAutoscaler")
    metric = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    sts = next(m for m in out if m["kind"] == "StatefulSet")
    pod = sts["spec"]["template"]
    c = pod["spec"]["containers"][0]
    rendered_port = next(p["containerPort"] for p in c["ports"] if p["name"] == "metrics")
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(rendered_port)
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    engine_json = tmp_path / "engine.json"
    engine_json.write_text(next(m for m in out if m["kind"] == "ConfigMap")["data"]["engine.json"])
    assert json.loads(engine_json.read_text())["engine"]["metrics_port"] == rendered_port

    # The ranks as the StatefulSet runs them (its args), on loopback: the rendezvous address and the
    # ports are free local ones instead of the Service's ClusterIP and the pod's port.
    leader = f"127.0.0.1:{free_port()}"
    ports = [free_port(), free_port()]
    grpc_port = free_port()
    args = c["args"]
    assert args[:2] == ["engine", "--rank-from-hostname"] and "--config" in args
    procs = [
        subprocess.Popen(
            [
                *DUPLEX,
                "engine",
                "--rank",
                str(rank),
                "--world-size",
                "2",
                "--leader",
                leader,
                "--config",
                str(engine_json),
                "--port",
                str(grpc_port),
                "--set",
                "engine.host=127.0.0.1",
                "--set",
                f"engine.metrics_port={ports[rank]}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for rank in (1, 0)
    ]
    try:
        rank0, rank1 = scrape(ports[0], proc=procs[1]), scrape(ports[1], proc=procs[0])
        assert f"\n{metric} 0.0" in rank0  # rank 0: the replica's live sessions (none yet)
        assert f"\n{metric} 0.0" in rank1  # rank 1: 0, so the per-pod average is sessions / shards
        assert 'duplex_engine_rank_info{rank="1",world_size="2"} 1.0' in rank1
        assert "process_resident_memory_bytes" in rank1 and "duplex_engine_expert_seconds_count" in rank1

        rendered = {"7070": grpc_port, "grpc": grpc_port}
        for rank in (0, 1):
            local = {**rendered, str(rendered_port): ports[rank], "metrics": ports[rank]}
            pod = f"talk-engine-0-{rank}"
            for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                result = run_probe(c[kind], local, pod, deadline_s=120)
                assert result.returncode == 0, (rank, kind, result.stderr)
        front_probes_pass(out, tmp_path, f"127.0.0.1:{grpc_port}", kube, kube_cluster)
    finally:
        rank1_proc, rank0_proc = procs
        if rank0_proc.poll() is None:
            # rank 0 gone: its probes fail (what makes the kubelet restart it)
            rank0_proc.send_signal(signal.SIGTERM)
            rank0_proc.wait(timeout=60)
            dead = run_probe(c["livenessProbe"], {"7070": grpc_port, "9090": ports[0]}, "talk-engine-0-0")
            assert dead.returncode == 1 and "does not accept connections" in dead.stderr
        if rank0_proc.poll() is None:
            rank0_proc.send_signal(signal.SIGTERM)  # rank 0 stopping releases rank 1
        rank0_proc.wait(timeout=60)
        try:
            rank1_proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            rank1_proc.kill()
            raise


def leader_slice(kube: Kube, out: list[Manifest], engine: str) -> str:
    """A fresh namespace holding one EndpointSlice as the EndpointSlice controller writes it for the rendered
    leader Service of replica 0 (its labels, its ``grpc`` port) with ``engine`` as the serving endpoint."""
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    leader = next(m for m in out if m["kind"] == "Service" and m["metadata"]["name"] == "talk-engine-0-leader")
    host, port = engine.rsplit(":", 1)
    served = kube.served_group_versions("EndpointSlice")
    body = {
        "apiVersion": "discovery.k8s.io/v1" if "discovery.k8s.io/v1" in served else "discovery.k8s.io/v1beta1",
        "kind": "EndpointSlice",
        "metadata": {"name": "talk-engine-0-leader-x1", "labels": leader["metadata"]["labels"]},
        "addressType": "IPv4",
        "ports": [{"name": "grpc", "port": int(port), "protocol": "TCP"}],
        "endpoints": [{"addresses": [host], "conditions": {"ready": True}}],
    }
    kube.create(body, namespace)
    return namespace


def front_probes_pass(out: list[Manifest], tmp_path: Path, engine: str, kube: Kube, kube_cluster: ControlPlane) -> None:
    """The rendered front pod's two containers, ``duplex picker`` and ``duplex envoy`` run with their rendered
    args (the pod's paths and ports mapped to local ones; the picker watches the engines' EndpointSlices in
    the test's API server, in a namespace standing for the model's), and their rendered probes: ready with a
    serving engine (Envoy's readiness asks the picker's health through Envoy's listener); alive but not ready
    with none."""
    front = next(m for m in out if m["kind"] == "Deployment" and m["metadata"]["name"] == "talk-front")
    by_name = {c["name"]: c for c in front["spec"]["template"]["spec"]["containers"]}
    envoy_c, picker_c = by_name["envoy"], by_name["picker"]
    gateway_json = tmp_path / "gateway.json"
    gateway_json.write_text(next(m for m in out if m["kind"] == "ConfigMap")["data"]["gateway.json"])
    rendered_port = next(p["containerPort"] for p in envoy_c["ports"] if p["name"] == "grpc")
    rendered_eds = picker_c["args"][picker_c["args"].index("--eds-path") + 1]
    rendered_picker = envoy_c["args"][envoy_c["args"].index("--picker") + 1]
    rendered_namespace = picker_c["args"][picker_c["args"].index("--engine-namespace") + 1]
    picker_rendered_port = rendered_picker.rsplit(":", 1)[1]
    for i, (engines, ready) in enumerate(((engine, True), (f"127.0.0.1:{free_port()}", False))):
        (tmp_path / f"eds{i}").mkdir()
        port, picker_port = free_port(), free_port()
        local_args = {
            rendered_namespace: leader_slice(kube, out, engines),
            f"{CONFIG_DIR}/gateway.json": str(gateway_json),
            rendered_eds: str(tmp_path / f"eds{i}" / "engines.json"),
            rendered_picker: f"127.0.0.1:{picker_port}",
            picker_rendered_port: str(picker_port),
            "/tmp/envoy.json": str(tmp_path / f"envoy{i}.json"),
        }
        local_sets = ["--set", "gateway.host=127.0.0.1", "--set", "gateway.metrics_port=0"]
        procs = [
            subprocess.Popen(
                [*DUPLEX, *(local_args.get(a, a) for a in c["args"]), *extra, *local_sets],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for c, extra in (
                (picker_c, ["--kubeconfig", str(kube_cluster.kubeconfig)]),
                (envoy_c, ["--port", str(port)]),
            )
        ]
        local = {"grpc": port, str(rendered_port): port, picker_rendered_port: picker_port}
        try:
            for c in (picker_c, envoy_c):
                for kind in ("startupProbe", "livenessProbe"):
                    alive = run_probe(c[kind], local, "talk-front-5d8f-x2x", deadline_s=60)
                    assert alive.returncode == 0, (c["name"], kind, alive.stderr)
            for c in (picker_c, envoy_c):
                if ready:
                    result = run_probe(c["readinessProbe"], local, "talk-front-5d8f-x2x", deadline_s=60)
                    assert result.returncode == 0, (c["name"], result.stderr)
                else:  # no healthy engine: the picker's health service says NOT_SERVING, through Envoy too
                    end = time.monotonic() + 60
                    while "NOT_SERVING" not in (result := run_probe(c["readinessProbe"], local)).stderr:
                        assert time.monotonic() < end, (c["name"], result.stderr)
                        time.sleep(0.2)  # poll interval of the deadline loop
                    assert result.returncode == 1
        finally:
            for proc in reversed(procs):
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    raise
        dead = run_probe(picker_c["livenessProbe"], local)  # the picker gone: its liveness fails
        assert dead.returncode == 1 and "does not accept connections" in dead.stderr


def test_redis_and_agent_probes_pass_against_the_started_processes(tmp_path: Path) -> None:
    """The managed Redis's ``redis-cli ping`` against a redis-server run with the rendered args, and the
    agent's ``GET /metrics`` against ``duplex agent`` run with its rendered args."""
    out = render({"agent": {"workers": 1}})
    by_name = {c["name"]: c for c in containers(out)}
    redis_c, agent_c = by_name["redis"], by_name["agent"]
    port = free_port()
    redis = subprocess.Popen(
        ["redis-server", *redis_c["args"], "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    agent: subprocess.Popen[bytes] | None = None
    try:
        ping = run_probe(redis_c["livenessProbe"], {"6379": port}, deadline_s=30)
        assert ping.returncode == 0 and ping.stdout.strip() == "PONG", ping
        (tmp_path / "agent.json").write_text(next(m for m in out if m["kind"] == "ConfigMap")["data"]["agent.json"])
        metrics = free_port()
        args = [a.replace("$(DUPLEX_REDIS_URL)", f"redis://127.0.0.1:{port}/0") for a in agent_c["args"]]
        args = [str(tmp_path / "agent.json") if a == f"{CONFIG_DIR}/agent.json" else a for a in args]
        agent = subprocess.Popen(
            [*DUPLEX, *args, "--metrics-port", str(metrics), "--set", "agent.host=127.0.0.1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for kind in ("livenessProbe", "readinessProbe"):
            result = run_probe(agent_c[kind], {"metrics": metrics}, deadline_s=60)
            assert result.returncode == 0, (kind, result.stderr)
        assert list(tmp_path.iterdir()) == [tmp_path / "agent.json"]  # the rendered Redis wrote no file
    finally:
        for proc in (agent, redis):
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    raise
    dead = run_probe(redis_c["livenessProbe"], {"6379": port})
    assert dead.returncode != 0


def wait_for_log(path: Path, text: str, proc: subprocess.Popen[bytes], deadline_s: float) -> str:
    """``path``'s contents once ``text`` is in it; fails when the process exits or the deadline passes."""
    end = time.monotonic() + deadline_s
    while text not in (log := path.read_text(errors="replace") if path.exists() else ""):
        assert proc.poll() is None, f"exited {proc.returncode} before {text!r}:\n{log[-3000:]}"
        assert time.monotonic() < end, f"no {text!r} after {deadline_s} s:\n{log[-3000:]}"
        time.sleep(0.2)  # poll interval of the deadline loop
    return log


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise


def test_engine_and_agent_reach_redis_through_the_mounted_url_secret(tmp_path: Path) -> None:
    """``spec.agent.redis.urlSecret``: ``duplex agent`` and ``duplex engine``, run with the rendered args and
    ``DUPLEX_REDIS_URL_FILE`` (the Secret's file at its mounted place under ``tmp_path``), reach a Redis that
    requires the password only that file holds: the worker creates its group on the jobs stream, the engine
    its results stream. Neither prints the password."""
    out = render({"agent": {"workers": 1, "redis": {"managed": False, "urlSecret": "redis-url"}}})
    by_name = {c["name"]: c for c in containers(out)}
    agent_c, engine_c = by_name["agent"], by_name["engine"]
    data = next(m for m in out if m["kind"] == "ConfigMap")["data"]
    for name in ("agent.json", "engine.json"):
        (tmp_path / name).write_text(data[name])
    password = f"pw-{os.getpid()}-{time.monotonic_ns()}"
    port = free_port()
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    redis_server = subprocess.Popen(
        [
            *("redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
            *("--requirepass", password, "--dir", str(tmp_path)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("DUPLEX_REDIS_URL")}
    agent: subprocess.Popen[bytes] | None = None
    engine: subprocess.Popen[bytes] | None = None
    try:
        args, agent_env = local_redis_args(agent_c, url, tmp_path)
        assert args[1:3] == ["--redis-url-file", agent_env["DUPLEX_REDIS_URL_FILE"]]
        agent_log = tmp_path / "agent.log"
        agent = subprocess.Popen(
            [*DUPLEX, *args, "--metrics-port", "0", "--set", "agent.host=127.0.0.1"],
            env={**base_env, **agent_env},
            stdout=agent_log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        # The engine as its StatefulSet runs it, one rank on loopback; the URL comes from the variable alone.
        engine_args, engine_env = local_redis_args(engine_c, url, tmp_path)
        assert engine_env == agent_env and "--redis-url" not in " ".join(engine_args)
        engine_log = tmp_path / "engine.log"
        engine = subprocess.Popen(
            [
                *(*DUPLEX, "engine", "--config", str(tmp_path / "engine.json"), "--port", str(free_port())),
                *("--set", "engine.host=127.0.0.1", "--set", "engine.metrics_port=0"),
            ],
            env={**base_env, **engine_env},
            stdout=engine_log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        wait_for_log(agent_log, "duplex agent: ready", agent, deadline_s=120)
        log = wait_for_log(engine_log, "background agent: redis", engine, deadline_s=180)
        assert f"redis://:***@127.0.0.1:{port}/0" in log

        import redis

        client = redis.Redis.from_url(url)
        prefix = "{duplex:prod:talk}"
        end = time.monotonic() + 60

        def streams() -> tuple[bool, bool]:  # (the jobs stream, this engine's results stream)
            keys = [k.decode() for k in client.keys(f"{prefix}:*")]
            return f"{prefix}:jobs" in keys, any(k.startswith(f"{prefix}:results:") for k in keys)

        while streams() != (True, True):
            assert time.monotonic() < end, client.keys("*")
            time.sleep(0.2)  # poll interval of the deadline loop
        assert client.xinfo_groups(f"{prefix}:jobs")  # the worker's consumer group
        client.close()
    finally:
        for proc in (engine, agent, redis_server):
            stop(proc)
    for log_file in ("agent.log", "engine.log"):
        assert password not in (tmp_path / log_file).read_text(errors="replace"), log_file


@pytest.mark.parametrize("command", ["engine", "agent"])
def test_an_unusable_redis_url_file_is_named(command: str, tmp_path: Path) -> None:
    runner = CliRunner()
    missing = tmp_path / "redis" / "url"
    out = runner.invoke(app, [command, "--redis-url-file", str(missing)])
    assert out.exit_code == 2 and f"duplex {command}: --redis-url-file {missing}: No such file" in out.stderr
    missing.parent.mkdir()
    missing.write_text("\n")
    out = runner.invoke(app, [command], env={"DUPLEX_REDIS_URL_FILE": str(missing)})
    assert out.exit_code == 2 and "expected one Redis URL" in out.stderr
    missing.write_text("redis://r:6379/0\n")
    out = runner.invoke(app, [command, "--redis-url", "redis://other:6379/0", "--redis-url-file", str(missing)])
    assert out.exit_code == 2 and "pass one, not both" in out.stderr


def test_front_pod_serves_the_realtime_page_through_envoy(
    tmp_path: Path, kube: Kube, kube_cluster: ControlPlane
) -> None:
    """With ``gateway.httpPort``: the front pod's ``picker`` (its HTTP app and the engines' WebSocket endpoint
    file) and ``envoy`` containers run with their rendered args; the page comes back through Envoy's Realtime
    listener from the picker's loopback app."""
    out = render({"gateway": {"httpPort": 8088}})
    front = next(m for m in out if m["kind"] == "Deployment" and m["metadata"]["name"] == "talk-front")
    by_name = {c["name"]: c for c in front["spec"]["template"]["spec"]["containers"]}
    envoy_c, picker_c = by_name["envoy"], by_name["picker"]
    assert set(by_name) == {"envoy", "picker"}
    data = next(m for m in out if m["kind"] == "ConfigMap")["data"]
    (tmp_path / "gateway.json").write_text(data["gateway.json"])
    (tmp_path / "eds").mkdir()
    arg = lambda c, flag: c["args"][c["args"].index(flag) + 1]  # noqa: E731
    rendered_http = arg(picker_c, "--http-port")
    assert arg(envoy_c, "--realtime") == f"127.0.0.1:{rendered_http}"
    picker_port, http_port, public, port = free_port(), free_port(), free_port(), free_port()
    local_args = {
        arg(picker_c, "--engine-namespace"): leader_slice(kube, out, f"127.0.0.1:{free_port()}"),  # no engine needed
        f"{CONFIG_DIR}/gateway.json": str(tmp_path / "gateway.json"),
        arg(picker_c, "--eds-path"): str(tmp_path / "eds" / "engines.json"),
        arg(picker_c, "--realtime-eds-path"): str(tmp_path / "eds" / "realtime.json"),
        arg(picker_c, "--port"): str(picker_port),
        arg(envoy_c, "--picker"): f"127.0.0.1:{picker_port}",
        rendered_http: str(http_port),
        arg(envoy_c, "--realtime"): f"127.0.0.1:{http_port}",
        "/tmp/envoy.json": str(tmp_path / "envoy.json"),
    }
    runs = (
        (picker_c, ["--kubeconfig", str(kube_cluster.kubeconfig)]),
        (envoy_c, ["--port", str(port), "--set", "gateway.host=127.0.0.1", "--set", f"gateway.http_port={public}"]),
    )
    procs = [
        subprocess.Popen(
            [*DUPLEX, *(local_args.get(a, a) for a in c["args"]), *extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for c, extra in runs
    ]
    try:
        end = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{public}/", timeout=5) as r:
                    status, page = r.status, r.read().decode()
                break
            except OSError:
                assert time.monotonic() < end, "the page never came back through Envoy"
                time.sleep(0.2)  # poll interval of the deadline loop
        assert status == 200 and "<html" in page.lower()
        # the picker wrote the WebSocket endpoint file Envoy waited for (empty: no engine reported a port)
        realtime = json.loads((tmp_path / "eds" / "realtime.json").read_text())
        assert realtime["resources"][0]["cluster_name"] == "realtime"
        assert realtime["resources"][0]["endpoints"] == [{"lb_endpoints": []}]
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
