"""Host state the e2e node (:mod:`duplex_node`) creates and must remove: its cgroup tree, the node bridge and
its route, sysctls, KUBE-*/CNI-* iptables chains, mounts and network namespaces, host paths, and the processes
only a node runs. Every function here is safe to call when there is nothing to remove.

Address plan (inside the benchmarking range 198.18.0.0/15): Services 198.18.0.0/16 (routed onto the bridge),
pods 198.19.0.0/24 on ``duplexbr0``, whose own address 198.19.0.1 is the pods' gateway and the node IP."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cluster"))

from duplex_controlplane import SERVICE_CIDR, wait_until

BRIDGE = "duplexbr0"
NODE_IP = "198.19.0.1"
POD_CIDR = "198.19.0.0/24"
CGROUP_NAME = "duplex-node"
CGROUP_FS = Path("/sys/fs/cgroup")
DAEMONS_CGROUP_PROCS = CGROUP_FS / "pids" / CGROUP_NAME / "daemons" / "cgroup.procs"
# Kernel settings the node changes (the kubelet's "kernel tunables", forwarding for the bridge, kube-proxy's
# route_localnet): recorded before, restored after.
SYSCTLS = (
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/route_localnet",
    "net/bridge/bridge-nf-call-iptables",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
# Host paths the daemons create outside the work dir (hard-coded in kubelet / containerd / CNI): removed at
# teardown when they did not exist before.
NETNS_DIR = Path("/run/netns")
HOST_PATHS = (
    Path("/var/log/pods"),
    Path("/var/log/containers"),
    Path("/var/lib/cni"),
    Path("/run/containerd"),
    NETNS_DIR,
)
# Processes only a node runs: none may be left after teardown.
NODE_PROCESS_NAMES = ("kubelet", "kube-proxy", "kube-scheduler", "containerd", "containerd-shim", "pause")


def cgroup_hierarchies() -> list[Path]:
    """The cgroup v1 hierarchies mounted under /sys/fs/cgroup (the v2 ``unified`` one holds no controllers)."""
    return sorted(p for p in CGROUP_FS.iterdir() if p.is_dir() and p.name != "unified")


def make_cgroups() -> Path:
    """``duplex-node`` (+ ``duplex-node/daemons``) in every hierarchy; returns the daemons' pids cgroup."""
    for h in cgroup_hierarchies():
        for sub in (h / CGROUP_NAME, h / CGROUP_NAME / "daemons"):
            sub.mkdir(exist_ok=True)
            if h.name == "cpuset":  # a v1 cpuset cgroup takes no task until its cpus and mems are set
                for f in ("cpuset.cpus", "cpuset.mems"):
                    (sub / f).write_text((sub.parent / f).read_text())
    return CGROUP_FS / "pids" / CGROUP_NAME / "daemons"


def cgroup_pids() -> set[int]:
    """Every process in the node's cgroup tree (daemons, shims, pods)."""
    root = CGROUP_FS / "pids" / CGROUP_NAME
    pids: set[int] = set()
    if root.exists():
        for procs in root.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in procs.read_text().split())
    return pids


def kill_cgroup_tree(timeout: float = 30) -> None:
    """SIGKILL everything in the node's cgroup tree until it is empty, then remove the cgroups."""
    deadline = time.monotonic() + timeout
    while pids := cgroup_pids():
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes survive SIGKILL in cgroup {CGROUP_NAME}: {sorted(pids)}")
        time.sleep(0.05)
    for h in cgroup_hierarchies():
        root = h / CGROUP_NAME
        if root.exists():
            for d in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                remove_cgroup(d)
            remove_cgroup(root)


def remove_cgroup(d: Path, timeout: float = 10) -> None:
    """rmdir a cgroup; a just-killed task can keep it busy for a moment."""
    wait_until(lambda: _rmdir(d), timeout, f"cgroup {d} removable", interval=0.05)


def _rmdir(d: Path) -> bool:
    try:
        d.rmdir()
    except FileNotFoundError:
        pass
    return not d.exists()


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=check, capture_output=True, text=True)


def read_sysctls() -> dict[str, str]:
    out = {}
    for name in SYSCTLS:
        p = Path("/proc/sys") / name
        if p.exists():
            out[name] = p.read_text().strip()
    return out


def write_sysctls(values: dict[str, str]) -> None:
    for name, value in values.items():
        with contextlib.suppress(OSError):
            (Path("/proc/sys") / name).write_text(value)


def make_bridge() -> None:
    """The node bridge with the node IP / pod gateway, and the Service range routed onto it."""
    sh("ip", "link", "add", BRIDGE, "type", "bridge")
    sh("ip", "addr", "add", f"{NODE_IP}/24", "dev", BRIDGE)
    sh("ip", "link", "set", BRIDGE, "up")
    sh("ip", "route", "add", SERVICE_CIDR, "dev", BRIDGE, "src", NODE_IP)
    write_sysctls({"net/ipv4/ip_forward": "1", "net/bridge/bridge-nf-call-iptables": "1"})


def delete_bridge() -> None:
    """The bridge (its route and any pod veth still attached go with it)."""
    if sh("ip", "link", "show", BRIDGE, check=False).returncode == 0:
        sh("ip", "link", "delete", BRIDGE)


def node_chains(tool: str = "iptables") -> dict[str, list[str]]:
    """KUBE-* and CNI-* chains per table, as ``iptables -S`` lists them."""
    chains: dict[str, list[str]] = {}
    for table in ("filter", "nat", "mangle", "raw"):
        res = sh(tool, "-t", table, "-S", check=False)
        names = [ln.split()[1] for ln in res.stdout.splitlines() if ln.startswith("-N ")]
        found = [n for n in names if n.startswith(("KUBE-", "CNI-"))]
        if found:
            chains[table] = found
    return chains


def delete_node_chains() -> None:
    """Unhook and delete every KUBE-* / CNI-* chain (kubelet, kube-proxy and CNI create them)."""
    for tool in ("iptables", "ip6tables"):
        for table, chains in node_chains(tool).items():
            rules = sh(tool, "-t", table, "-S").stdout.splitlines()
            for rule in rules:  # jumps from the built-in chains into ours (comments are quoted: shlex)
                parts = shlex.split(rule)
                if parts[0] == "-A" and not parts[1].startswith(("KUBE-", "CNI-")) and _jumps_to_ours(parts):
                    sh(tool, "-t", table, "-D", *parts[1:])
            for chain in chains:
                sh(tool, "-t", table, "-F", chain)
            for chain in chains:
                sh(tool, "-t", table, "-X", chain)


def _jumps_to_ours(parts: list[str]) -> bool:
    for flag in ("-j", "-g"):
        if flag in parts:
            target = parts[parts.index(flag) + 1]
            if target.startswith(("KUBE-", "CNI-")):
                return True
    return False


def mounts_under(*dirs: Path) -> list[str]:
    """Mount points at or below ``dirs`` (from /proc/self/mountinfo), deepest first."""
    prefixes = [str(d) for d in dirs]
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if any(point == p or point.startswith(p + "/") for p in prefixes):
            points.append(point)
    return sorted(points, key=lambda p: -len(p))


def unmount_all(*dirs: Path) -> None:
    for point in mounts_under(*dirs):
        if sh("umount", point, check=False).returncode != 0:
            sh("umount", "-l", point, check=False)


def orphan_netns() -> list[Path]:
    """CNI network namespaces no process is in (a live sandbox always has its pause process in its own)."""
    if not NETNS_DIR.exists():
        return []
    in_use = set()
    for ns in Path("/proc").glob("[0-9]*/ns/net"):
        with contextlib.suppress(OSError):
            in_use.add(ns.stat().st_ino)
    return [p for p in NETNS_DIR.glob("cni-*") if p.stat().st_ino not in in_use]


def node_processes(workdir: Path) -> list[str]:
    """Processes that belong to a node: the node-only daemons by name, anything naming ``workdir``."""
    import psutil

    found = []
    for p in psutil.process_iter(["pid", "name", "cmdline", "status"]):
        if p.info["status"] == psutil.STATUS_ZOMBIE:  # dead; only its parent's wait() is pending (shims: pid 1)
            continue
        name = p.info["name"] or ""
        cmdline = " ".join(p.info["cmdline"] or [])
        if name.startswith(NODE_PROCESS_NAMES) or str(workdir) in cmdline:
            found.append(f"{p.info['pid']} {name} {cmdline[:120]}")
    return found


SHIM_SOCKET_DIR = Path("/run/containerd/s")


def dead_shim_sockets() -> list[Path]:
    """containerd 1.6 puts every shim's socket in /run/containerd/s whatever its --root/--state; a SIGKILLed shim
    leaves its socket behind. One no process listens on any more (connect refused) is dead."""
    dead = []
    for path in SHIM_SOCKET_DIR.iterdir() if SHIM_SOCKET_DIR.exists() else []:
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(str(path))
            except ConnectionRefusedError:
                dead.append(path)
            except OSError:
                pass
    return dead


def remove_dead_shim_sockets() -> None:
    for path in dead_shim_sockets():
        path.unlink(missing_ok=True)


def remove_empty_trees(paths: tuple[Path, ...]) -> None:
    """Remove each of ``paths`` that holds only (empty) directories: left by a crashed run, they would
    otherwise look like the host's own and survive every later teardown."""
    for p in paths:
        if p.is_dir() and not p.is_mount() and all(c.is_dir() for c in p.rglob("*")):
            for d in sorted((c for c in p.rglob("*")), key=lambda c: -len(c.parts)):
                d.rmdir()
            p.rmdir()


def host_path_entries(paths: tuple[Path, ...]) -> set[str]:
    """Every file and directory at or below ``paths`` (to tell afterwards what a run added)."""
    found: set[str] = set()
    for p in paths:
        if p.exists():
            found.add(str(p))
            found.update(str(c) for c in p.rglob("*"))
    return found


def remove_added_entries(paths: tuple[Path, ...], before: set[str]) -> None:
    """Remove what appeared at or below ``paths`` since ``before`` (pod log dirs, CNI result caches, ...),
    deepest first; a directory that existed before stays."""
    for entry in sorted(host_path_entries(paths) - before, key=lambda e: -len(Path(e).parts)):
        path = Path(entry)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
