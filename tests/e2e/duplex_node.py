"""A real single-node Kubernetes cluster from Debian parts, for end-to-end tests.

etcd + kube-apiserver + kube-controller-manager (from :mod:`duplex_controlplane`), kube-scheduler, containerd +
runc + bridge CNI, kubelet and kube-proxy (iptables mode). Kubernetes binaries are built from Debian's
``kubernetes`` source by ``scripts/kube-build.sh`` into ``$DUPLEX_CACHE``; images are imported, never pulled
(``scripts/oci-archive.sh``). Needs root (bridges, iptables, cgroups, mounts). See docs/e2e.md.

Address plan (all inside the benchmarking range 198.18.0.0/15, so no test traffic targets a real network):

- Services: 198.18.0.0/16 (routed onto the node bridge, so an unmatched ClusterIP never leaves the machine)
- Pods:     198.19.0.0/24 on the bridge ``duplexbr0``; 198.19.0.1 is the pods' gateway *and* the node IP
  (the apiserver, kubelet and kube-proxy listen there; this VM's kernel has no dummy devices)

Everything the node starts lives in one cgroup tree (``/sys/fs/cgroup/*/duplex-node``: the daemons, containerd's
shims and, as the kubelet's ``cgroupRoot``, every pod), so teardown kills the whole tree by its cgroup. One node
runs per machine at a time (a lock under the cache): the bridge, the KUBE-* chains and the cgroup are global.

Usable on its own::

    python tests/e2e/duplex_node.py   # prints KUBECONFIG=..., Ctrl-C tears it down
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cluster"))

from duplex_controlplane import (
    ControlPlane,
    ProcessExited,
    cache_dir,
    start_apiserver,
    start_controller_manager,
    start_logged,
    wait_until,
)
from node_host import (
    BRIDGE,
    CGROUP_NAME,
    DAEMONS_CGROUP_PROCS,
    HOST_PATHS,
    NETNS_DIR,
    NODE_IP,
    POD_CIDR,
    cgroup_hierarchies,
    dead_shim_sockets,
    delete_bridge,
    delete_node_chains,
    host_path_entries,
    kill_cgroup_tree,
    make_bridge,
    make_cgroups,
    mounts_under,
    node_chains,
    node_processes,
    orphan_netns,
    read_sysctls,
    remove_added_entries,
    remove_dead_shim_sockets,
    remove_empty_trees,
    sh,
    unmount_all,
    write_sysctls,
)
from node_images import CNI_BIN_DIR, PAUSE_IMAGE, busybox_archive, ensure_node_binaries, pause_archive

from duplex.operator.kube import Kube, load_api_client
from duplex.serving.ports import free_port

NODE_NAME = "duplex-node"


# --- the node ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class NodeCluster:
    """A running single-node cluster. Use :func:`node_cluster`."""

    workdir: Path
    """Node state: containerd root/state, kubelet root, CNI and daemon configs, logs."""
    plane: ControlPlane
    """etcd + kube-apiserver + kube-controller-manager; the apiserver listens on the node IP."""
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    """Seconds each bring-up phase took (``total`` = the whole bring-up)."""
    procs: dict[str, subprocess.Popen[bytes]] = dataclasses.field(default_factory=dict)
    """The node daemons by name (scheduler, containerd, kubelet, kube-proxy); the plane keeps its own."""
    host_state: dict[str, Any] = dataclasses.field(default_factory=dict)
    """What teardown restores: sysctls, the entries under the host paths and the netns present before."""
    stopped: bool = False
    """Set by the first :meth:`stop`; later calls do nothing."""

    @property
    def kubeconfig(self) -> Path:
        return self.plane.kubeconfig

    @property
    def containerd_socket(self) -> Path:
        return self.workdir / "containerd" / "containerd.sock"

    def log(self, name: str) -> str:
        p = self.workdir / f"{name}.log"
        return p.read_text(errors="replace") if p.exists() else self.plane.log(name)

    def check_alive(self) -> None:
        self.plane.check_alive()
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise ProcessExited(f"{name} exited with {p.returncode}:\n{self.log(name)[-4000:]}")

    def ctr(self, *args: str) -> str:
        """``ctr`` against this node's containerd, in the CRI's ``k8s.io`` namespace."""
        return sh("ctr", "--address", str(self.containerd_socket), "-n", "k8s.io", *args).stdout

    def import_image(self, archive: Path) -> None:
        """Load an OCI archive (``scripts/oci-archive.sh``) into the node: pods use it with imagePullPolicy Never."""
        self.ctr("images", "import", str(archive))

    def kube(self) -> Kube:
        """The operator's API wrapper (plain dicts) on the admin credentials."""
        return Kube(load_api_client(str(self.kubeconfig)))

    def create_namespace(self, name: str) -> None:
        """Create a namespace and wait until pods can be created in it: the ServiceAccount admission plugin
        rejects a pod ("no API token found for service account default") until the controller-manager has
        made the namespace's default ServiceAccount and its token Secret."""
        kube = self.kube()
        kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})

        def token_ready() -> bool:
            self.check_alive()
            sa = kube.get("v1", "ServiceAccount", name, "default")
            return bool(sa and sa.get("secrets"))

        wait_until(token_ready, 60, f"namespace {name}: default ServiceAccount token", interval=0.2)

    def core(self) -> Any:
        """A ``kubernetes`` CoreV1Api on the admin credentials."""
        from kubernetes import client

        return client.CoreV1Api(load_api_client(str(self.kubeconfig)))

    def start_daemon(self, name: str, argv: list[str]) -> None:
        """Start a node daemon inside the node's cgroup (it and all it forks die with the tree)."""
        wrapped = ["sh", "-c", f'echo $$ > {DAEMONS_CGROUP_PROCS} && exec "$@"', name, *argv]
        self.procs[name] = start_logged(self.workdir / f"{name}.log", wrapped)

    def adopt_plane(self) -> None:
        """Move the control plane's processes (started by duplex_controlplane) into the node's cgroup, so a
        later run can kill them if this one dies without tearing down. They do not fork: moving is enough."""
        for p in self.plane.procs.values():
            with contextlib.suppress(ProcessLookupError, OSError):
                DAEMONS_CGROUP_PROCS.write_text(str(p.pid))

    def stop(self) -> None:
        """Tear down: pods, daemons, mounts, iptables chains, the bridge, cgroups, files; idempotent."""
        if self.stopped:
            return
        self.stopped = True
        errors: list[str] = []

        def step(what: str, fn: Callable[[], object]) -> None:
            try:
                fn()
            except Exception as e:  # keep tearing down; report everything at the end
                errors.append(f"{what}: {e!r}")

        step("pods", self._stop_pods)
        step("processes", kill_cgroup_tree)
        step("reap", self._reap)
        step("control plane", self.plane.stop)
        step("mounts", lambda: unmount_all(self.workdir, self.plane.workdir, *self._new_netns()))
        step("netns", self._remove_new_netns)
        step("iptables", delete_node_chains)
        step("bridge", delete_bridge)
        step("sysctls", lambda: write_sysctls(self.host_state.get("sysctls", {})))
        step("shim sockets", remove_dead_shim_sockets)
        step("host paths", self._remove_host_paths)
        step("files", self._remove_dirs)
        self.procs.clear()
        if errors:
            raise RuntimeError("node teardown incomplete:\n" + "\n".join(errors))

    def _stop_pods(self) -> None:
        """Let the kubelet stop every pod (CNI DEL, network namespaces released) before the hard kill."""
        if "kubelet" not in self.procs or self.procs["kubelet"].poll() is not None:
            return
        for name in ("kube-scheduler", "kube-controller-manager"):  # nothing recreates or places pods now
            for procs in (self.procs, self.plane.procs):
                if name in procs:
                    procs[name].terminate()
        core = self.core()
        for pod in core.list_pod_for_all_namespaces().items:
            with contextlib.suppress(Exception):
                core.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0)

        def sandboxes_gone() -> bool:
            return self.ctr("tasks", "ls", "-q").strip() == ""

        with contextlib.suppress(TimeoutError):  # the cgroup kill below still ends whatever is left
            wait_until(sandboxes_gone, 60, "pod sandboxes stopped", interval=0.5)

    def _reap(self) -> None:
        """Collect our killed daemons' exit status (else they linger as zombies named kubelet, containerd…)."""
        for p in self.procs.values():
            p.wait(timeout=10)

    def _remove_new_netns(self) -> None:
        for p in self._new_netns():
            p.unlink()

    def _remove_dirs(self) -> None:
        for d in (self.workdir, self.plane.workdir):
            if d.exists():
                shutil.rmtree(d)

    def _new_netns(self) -> list[Path]:
        before = set(self.host_state.get("netns", []))
        return [p for p in NETNS_DIR.glob("cni-*") if p.name not in before] if NETNS_DIR.exists() else []

    def _remove_host_paths(self) -> None:
        remove_added_entries(HOST_PATHS, set(self.host_state.get("host_paths", [])))

    def leftovers(self) -> list[str]:
        """What teardown should have removed and did not (empty after a clean :meth:`stop`)."""
        left = [f"process {p}" for p in node_processes(self.workdir) + node_processes(self.plane.workdir)]
        left += [f"mount {m}" for m in mounts_under(self.workdir, self.plane.workdir)]
        left += [f"netns {p}" for p in self._new_netns()]
        left += [f"dead shim socket {p}" for p in dead_shim_sockets()]
        for tool in ("iptables", "ip6tables"):
            left += [f"{tool} -t {t} chain {c}" for t, cs in node_chains(tool).items() for c in cs]
        if sh("ip", "link", "show", BRIDGE, check=False).returncode == 0:
            left.append(f"bridge {BRIDGE}")
        left += [f"cgroup {h / CGROUP_NAME}" for h in cgroup_hierarchies() if (h / CGROUP_NAME).exists()]
        left += [f"dir {d}" for d in (self.workdir, self.plane.workdir) if d.exists()]
        before = set(self.host_state.get("host_paths", []))
        left += [f"host path {p}" for p in sorted(host_path_entries(HOST_PATHS) - before)]
        return left


def containerd_config(workdir: Path) -> str:
    d = workdir / "containerd"
    return f"""version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # this VM lacks CAP_SYS_RESOURCE: without it runc fails with "can't get final child's PID from pipe"
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{d}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{workdir}/cni/net.d"
"""


def cni_config(workdir: Path) -> dict[str, Any]:
    return {
        "cniVersion": "0.4.0",
        "name": "duplex",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                # no masquerade: pods have no business outside the node (and no CNI-* NAT chains appear)
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_IP, "rangeStart": "198.19.0.10"}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(workdir / "cni" / "ipam"),
                },
            },
            {"type": "loopback"},
        ],
    }


def kubelet_config(workdir: Path, plane: ControlPlane, port: int, healthz_port: int) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": NODE_IP,
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": f"/{CGROUP_NAME}",
        "failSwapOn": False,
        # the kubelet listens on the node IP only; the apiserver proxies logs/exec to it without a client cert
        "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
        "authorization": {"mode": "AlwaysAllow"},
        # imported images must never be garbage-collected, nor pods evicted because the disk is fairly full
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        # no cluster DNS; pods get a resolv.conf without nameservers rather than the host's resolvers
        "resolvConf": str(workdir / "resolv.conf"),
        "serializeImagePulls": False,
        # the first status the kubelet posts is NotReady (its runtime checks have not run yet); the default 10 s
        # until the next one was a third of the bring-up
        "nodeStatusUpdateFrequency": "2s",
        "tlsCertFile": str(plane.certs.server_cert),
        "tlsPrivateKeyFile": str(plane.certs.server_key),
    }


def _wait_healthz(cluster: NodeCluster, url: str, what: str) -> None:
    import ssl
    import urllib.request

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE

    def ok() -> bool:
        cluster.check_alive()
        with urllib.request.urlopen(url, context=ctx, timeout=2) as r:
            return bool(r.status == 200)

    wait_until(ok, 90, what, interval=0.2)


def node_ready(cluster: NodeCluster) -> bool:
    cluster.check_alive()
    node = cluster.core().read_node(NODE_NAME)
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])


def _prepare_host() -> dict[str, Any]:
    """Clear what a crashed earlier run left (under the lock nothing else uses these), then record the host
    state teardown restores."""
    kill_cgroup_tree()
    delete_node_chains()
    delete_bridge()
    stale = [*Path(tempfile.gettempdir()).glob("duplex-node-*"), *Path("/dev/shm").glob("duplex-node-plane-*")]
    unmount_all(*stale)
    for d in stale:
        shutil.rmtree(d, ignore_errors=True)
    for ns in orphan_netns():
        unmount_all(ns)
        ns.unlink()
    remove_dead_shim_sockets()
    remove_empty_trees((Path("/run/containerd"), NETNS_DIR))  # runtime dirs: meaningless when empty
    return {
        "sysctls": read_sysctls(),
        "host_paths": sorted(host_path_entries(HOST_PATHS)),
        "netns": [p.name for p in NETNS_DIR.glob("cni-*")] if NETNS_DIR.exists() else [],
    }


def start_node(cluster: NodeCluster, bins: dict[str, Path]) -> None:
    """Bring the node up phase by phase, recording each phase's duration in ``cluster.timings``."""
    w = cluster.workdir
    t = time.monotonic()

    def phase(name: str) -> None:
        nonlocal t
        now = time.monotonic()
        cluster.timings[name] = round(now - t, 2)
        t = now

    pause, busybox = pause_archive(), busybox_archive()
    phase("images")
    start_controller_manager(
        cluster.plane, bins, controllers="*", extra_args=["--root-ca-file", str(cluster.plane.certs.ca)]
    )
    cluster.adopt_plane()
    sched_port = free_port()
    cluster.start_daemon(
        "kube-scheduler",
        [
            str(bins["kube-scheduler"]),
            "--kubeconfig",
            str(cluster.kubeconfig),
            "--leader-elect=false",
            "--port",
            "0",
            "--secure-port",
            str(sched_port),
            "--bind-address",
            "127.0.0.1",
            "--v",
            "1",
        ],
    )
    _wait_healthz(cluster, f"https://127.0.0.1:{sched_port}/healthz", "kube-scheduler /healthz")
    phase("controllers")
    (w / "containerd").mkdir()
    (w / "containerd.toml").write_text(containerd_config(w))
    cluster.start_daemon("containerd", ["containerd", "--config", str(w / "containerd.toml")])

    def containerd_up() -> bool:
        cluster.check_alive()
        return (
            cluster.containerd_socket.exists()
            and sh("ctr", "--address", str(cluster.containerd_socket), "version", check=False).returncode == 0
        )

    wait_until(containerd_up, 30, "containerd socket", interval=0.1)
    cluster.import_image(pause)
    cluster.import_image(busybox)
    phase("containerd")
    (w / "cni" / "net.d").mkdir(parents=True, exist_ok=True)
    (w / "cni" / "net.d" / "10-duplex.conflist").write_text(json.dumps(cni_config(w), indent=2))
    # No cluster DNS. Not empty: containerd copies the *host's* resolv.conf into a pod whose DNS config is empty.
    (w / "resolv.conf").write_text("# no cluster DNS on the duplex test node\noptions ndots:1\n")
    healthz = free_port()
    (w / "kubelet.yaml").write_text(json.dumps(kubelet_config(w, cluster.plane, free_port(), healthz), indent=2))
    cluster.start_daemon(
        "kubelet",
        [
            str(bins["kubelet"]),
            "--config",
            str(w / "kubelet.yaml"),
            "--kubeconfig",
            str(cluster.kubeconfig),
            "--container-runtime",
            "remote",
            "--container-runtime-endpoint",
            f"unix://{cluster.containerd_socket}",
            "--node-ip",
            NODE_IP,
            "--hostname-override",
            NODE_NAME,
            "--pod-infra-container-image",
            PAUSE_IMAGE,
            "--root-dir",
            str(w / "kubelet"),
            "--cert-dir",
            str(w / "kubelet-pki"),
            "--v",
            "1",
        ],
    )
    proxy_healthz = free_port()
    cluster.start_daemon(
        "kube-proxy",
        [
            str(bins["kube-proxy"]),
            "--kubeconfig",
            str(cluster.kubeconfig),
            "--proxy-mode",
            "iptables",
            "--hostname-override",
            NODE_NAME,
            "--bind-address",
            NODE_IP,
            "--cluster-cidr",
            POD_CIDR,
            "--nodeport-addresses",
            f"{NODE_IP}/32",
            "--healthz-bind-address",
            f"127.0.0.1:{proxy_healthz}",
            "--metrics-bind-address",
            f"127.0.0.1:{free_port()}",
            # leave the conntrack table size alone (the VM cannot set it; kind does the same)
            "--conntrack-max-per-core",
            "0",
            "--v",
            "1",
        ],
    )
    wait_until(lambda: node_ready(cluster), 120, f"node {NODE_NAME} Ready", interval=0.5)
    phase("node ready")


@contextlib.contextmanager
def node_cluster() -> Iterator[NodeCluster]:
    """A single-node cluster, torn down on exit; one per machine at a time (waits for the lock)."""
    if os.geteuid() != 0:
        raise RuntimeError("the e2e node needs root (bridges, iptables, cgroups, mounts)")
    start = time.monotonic()
    bins = ensure_node_binaries()
    lock_path = cache_dir() / "e2e-node.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        host_state = _prepare_host()
        make_bridge()  # the apiserver listens on the node IP
        make_cgroups()
        plane_dir = Path(tempfile.mkdtemp(prefix="duplex-node-plane-", dir="/dev/shm"))  # etcd fsyncs
        workdir = Path(tempfile.mkdtemp(prefix="duplex-node-"))  # overlayfs snapshots: on disk
        cluster: NodeCluster | None = None
        try:
            plane = start_apiserver(
                plane_dir,
                bins,
                host=NODE_IP,
                serve_pods=True,
                extra_args=["--kubelet-preferred-address-types", "InternalIP", "--allow-privileged=true"],
            )
            cluster = NodeCluster(workdir=workdir, plane=plane, host_state=host_state)
            cluster.adopt_plane()
            cluster.timings["apiserver"] = round(time.monotonic() - start, 2)
            start_node(cluster, bins)
            cluster.timings["total"] = round(time.monotonic() - start, 2)
            _record_timings(cluster)
            yield cluster
        finally:
            if cluster is not None:
                cluster.stop()
            else:  # the apiserver never came up (start_apiserver stopped etcd): undo the host set-up
                kill_cgroup_tree()
                delete_bridge()
                write_sysctls(host_state["sysctls"])
                shutil.rmtree(workdir, ignore_errors=True)
                shutil.rmtree(plane_dir, ignore_errors=True)


def _record_timings(cluster: NodeCluster) -> None:
    """Append this bring-up's phase times to the cache's log (cold vs warm runs for docs/e2e.md)."""
    with open(cache_dir() / "e2e-node-timings.jsonl", "a") as f:
        f.write(json.dumps({"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **cluster.timings}) + "\n")


if __name__ == "__main__":
    with node_cluster() as node:
        print(f"KUBECONFIG={node.kubeconfig}  timings={node.timings}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                node.check_alive()
                time.sleep(5)
