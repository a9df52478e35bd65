"""A real Kubernetes control plane for tests: etcd + kube-apiserver + kube-controller-manager on loopback.

Binaries: Debian's ``etcd-server`` and kube-apiserver / kube-controller-manager 1.20.2 built from Debian's
``kubernetes`` source package by ``scripts/kube-build.sh`` (cached under ``$DUPLEX_CACHE``, default
``~/.cache/duplex``). When they are missing, :func:`ensure_binaries` runs the build (slow, once).

Everything listens on free 127.0.0.1 ports; Service ClusterIPs come from the benchmarking range
198.18.0.0/16 and are never contacted. No kubelet, scheduler or DNS: tests mark pods ready by patching
their status. Usable on its own for manual poking::

    python tests/cluster/duplex_controlplane.py   # prints KUBECONFIG=..., Ctrl-C stops it
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import ipaddress
import os
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from duplex.serving.ports import free_port

REPO = Path(__file__).resolve().parents[2]
KUBE_VERSION = "1.20.2"
SERVICE_CIDR = "198.18.0.0/16"
CONTROLLERS = "statefulset,deployment,replicaset,garbagecollector"


def cache_dir() -> Path:
    return Path(os.environ.get("DUPLEX_CACHE", Path.home() / ".cache" / "duplex"))


def kube_bin_dir() -> Path:
    return cache_dir() / f"kube-{KUBE_VERSION}" / "bin"


def ensure_binaries() -> dict[str, Path]:
    """Paths of etcd, kube-apiserver, kube-controller-manager; builds them (scripts/kube-build.sh) if absent."""
    bins = {n: kube_bin_dir() / n for n in ("kube-apiserver", "kube-controller-manager")}
    if not all(p.exists() for p in bins.values()) or not shutil.which("etcd"):
        subprocess.run(["bash", str(REPO / "scripts" / "kube-build.sh")], check=True)
    etcd = shutil.which("etcd")
    if etcd is None:
        raise RuntimeError("etcd not found after scripts/kube-build.sh (Debian package etcd-server)")
    return {"etcd": Path(etcd), **bins}


# --- certificates ------------------------------------------------------------------------------------


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write_key(key: rsa.RSAPrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    )


def _cert(
    subject: x509.Name,
    key: rsa.RSAPrivateKey,
    issuer: x509.Name,
    issuer_key: rsa.RSAPrivateKey,
    ca: bool = False,
    sans: list[x509.GeneralName] | None = None,
    client: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        b = b.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        usage = [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH if client else x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]
        b = b.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclasses.dataclass
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    admin_cert: Path
    admin_key: Path
    sa_key: Path
    sa_pub: Path


def make_certs(d: Path, extra_ips: Sequence[str] = ()) -> Certs:
    """A CA, the apiserver's serving cert (loopback, the first Service IP and ``extra_ips``), an admin client
    cert (system:masters) and the service-account signing key pair, written into ``d``."""
    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "duplex-test-ca")])
    ca = _cert(ca_name, ca_key, ca_name, ca_key, ca=True)
    srv_key = _key()
    sans: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.DNSName("kubernetes"),
        x509.DNSName("kubernetes.default.svc"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("198.18.0.1")),
        *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in extra_ips),
    ]
    srv = _cert(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]), srv_key, ca_name, ca_key, sans=sans
    )
    adm_key = _key()
    adm = _cert(
        x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, "duplex-admin"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
            ]
        ),
        adm_key,
        ca_name,
        ca_key,
        client=True,
    )
    sa_key = _key()
    c = Certs(
        ca=d / "ca.crt",
        server_cert=d / "server.crt",
        server_key=d / "server.key",
        admin_cert=d / "admin.crt",
        admin_key=d / "admin.key",
        sa_key=d / "sa.key",
        sa_pub=d / "sa.pub",
    )
    c.ca.write_bytes(_pem(ca))
    c.server_cert.write_bytes(_pem(srv))
    _write_key(srv_key, c.server_key)
    c.admin_cert.write_bytes(_pem(adm))
    _write_key(adm_key, c.admin_key)
    _write_key(sa_key, c.sa_key)
    c.sa_pub.write_bytes(
        sa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return c


# --- processes ---------------------------------------------------------------------------------------


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    """Poll ``predicate`` until it holds; raise with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            if predicate():
                return
        except ProcessExited:
            raise
        except Exception as e:
            last = e
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"timed out after {timeout:.0f}s waiting for {what}" + (f" (last error: {last!r})" if last else "")
            )
        time.sleep(interval)


class ProcessExited(RuntimeError):
    """A process the tests started died: waiting for it is pointless."""


@dataclasses.dataclass
class ControlPlane:
    """A running etcd + kube-apiserver (+ kube-controller-manager). Use :func:`control_plane`."""

    workdir: Path
    certs: Certs
    api_port: int
    kubeconfig: Path
    host: str = "127.0.0.1"
    """Address the apiserver binds and advertises (loopback unless pods must reach it)."""
    procs: dict[str, subprocess.Popen[bytes]] = dataclasses.field(default_factory=dict)

    @property
    def server(self) -> str:
        return f"https://{self.host}:{self.api_port}"

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.certs.ca))
        ctx.load_cert_chain(str(self.certs.admin_cert), str(self.certs.admin_key))
        return ctx

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.server + path, context=self.ssl_context(), timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def log(self, name: str) -> str:
        p = self.workdir / f"{name}.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def check_alive(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise ProcessExited(f"{name} exited with {p.returncode}:\n{self.log(name)[-4000:]}")

    def _start(self, name: str, argv: list[str]) -> None:
        self.procs[name] = start_logged(self.workdir / f"{name}.log", argv)

    def stop(self) -> None:
        for name in reversed(list(self.procs)):
            p = self.procs[name]
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.procs.clear()


def start_logged(log: Path, argv: list[str]) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session with stdout and stderr appended to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _write_kubeconfig(path: Path, server: str, certs: Certs) -> None:
    path.write_text(f"""apiVersion: v1
kind: Config
clusters:
- name: duplex-test
  cluster: {{server: "{server}", certificate-authority: "{certs.ca}"}}
users:
- name: admin
  user: {{client-certificate: "{certs.admin_cert}", client-key: "{certs.admin_key}"}}
contexts:
- name: duplex-test
  context: {{cluster: duplex-test, user: admin, namespace: default}}
current-context: duplex-test
""")


def start_apiserver(
    workdir: Path,
    bins: dict[str, Path],
    *,
    host: str = "127.0.0.1",
    service_cidr: str = SERVICE_CIDR,
    serve_pods: bool = False,
    extra_args: Sequence[str] = (),
) -> ControlPlane:
    """etcd + kube-apiserver, ready (``/readyz``) when this returns.

    ``serve_pods``: pods run against this apiserver (a real node), so the ServiceAccount admission plugin
    stays on (pods get tokens) and the ``kubernetes`` Service's endpoint is ``host`` (must not be loopback).
    Without it, pods are never run and both are switched off."""
    certs = make_certs(workdir, [host] if host != "127.0.0.1" else [])
    etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
    cp = ControlPlane(workdir=workdir, certs=certs, api_port=api_port, kubeconfig=workdir / "kubeconfig", host=host)
    _write_kubeconfig(cp.kubeconfig, cp.server, certs)
    etcd_url, peer_url = f"http://127.0.0.1:{etcd_port}", f"http://127.0.0.1:{peer_port}"
    cp._start(
        "etcd",
        [
            str(bins["etcd"]),
            "--name",
            "default",
            "--data-dir",
            str(workdir / "etcd"),
            "--listen-client-urls",
            etcd_url,
            "--advertise-client-urls",
            etcd_url,
            "--listen-peer-urls",
            peer_url,
            "--initial-advertise-peer-urls",
            peer_url,
            "--initial-cluster",
            f"default={peer_url}",
            "--log-level",
            "warn",
        ],
    )
    wait_until(lambda: urllib.request.urlopen(etcd_url + "/health", timeout=2).status == 200, 30, "etcd /health")
    cp._start(
        "kube-apiserver",
        [
            str(bins["kube-apiserver"]),
            "--etcd-servers",
            etcd_url,
            "--bind-address",
            host,
            "--advertise-address",
            host,
            "--secure-port",
            str(api_port),
            "--insecure-port",
            "0",
            "--tls-cert-file",
            str(certs.server_cert),
            "--tls-private-key-file",
            str(certs.server_key),
            "--client-ca-file",
            str(certs.ca),
            "--service-account-key-file",
            str(certs.sa_pub),
            "--service-account-signing-key-file",
            str(certs.sa_key),
            "--service-account-issuer",
            "https://kubernetes.default.svc",
            "--service-cluster-ip-range",
            service_cidr,
            "--authorization-mode",
            "RBAC",
            *(
                ()
                if serve_pods
                else (
                    # No service-account controllers run here, so pods need no service account token.
                    "--disable-admission-plugins",
                    "ServiceAccount",
                    # The "kubernetes" Service's endpoints would be 127.0.0.1, which Endpoints validation rejects.
                    "--endpoint-reconciler-type",
                    "none",
                )
            ),
            "--enable-priority-and-fairness=false",
            "--cert-dir",
            str(workdir / "apiserver-certs"),
            "--profiling=false",
            "--v",
            "1",
            *extra_args,
        ],
    )

    def ready() -> bool:
        cp.check_alive()
        return cp.get("/readyz")[0] == 200

    try:
        wait_until(ready, 90, "kube-apiserver /readyz", interval=0.2)
    except BaseException:
        cp.stop()  # etcd too: the caller never gets the handle
        raise
    return cp


def start_controller_manager(
    cp: ControlPlane, bins: dict[str, Path], controllers: str = CONTROLLERS, extra_args: Sequence[str] = ()
) -> None:
    """kube-controller-manager with ``controllers`` (default: the workload and garbage-collector ones);
    healthy on return.

    Start it after the CRDs the tests own by are installed: the garbage collector discovers resource
    types at start and then only every 30 s."""
    port = free_port()
    cp._start(
        "kube-controller-manager",
        [
            str(bins["kube-controller-manager"]),
            "--kubeconfig",
            str(cp.kubeconfig),
            "--controllers",
            controllers,
            "--leader-elect=false",
            "--port",
            "0",
            "--secure-port",
            str(port),
            "--bind-address",
            "127.0.0.1",
            "--cert-dir",
            str(cp.workdir / "kcm-certs"),
            "--service-account-private-key-file",
            str(cp.certs.sa_key),
            "--use-service-account-credentials=false",
            "--kube-api-qps",
            "200",
            "--kube-api-burst",
            "400",
            "--concurrent-statefulset-syncs",
            "10",
            "--concurrent-deployment-syncs",
            "10",
            "--concurrent-replicaset-syncs",
            "10",
            "--concurrent-gc-syncs",
            "20",
            "--controller-start-interval",
            "0s",
            "--v",
            "1",
            *extra_args,
        ],
    )
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE

    def healthy() -> bool:
        cp.check_alive()
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=ctx, timeout=2) as r:
            return bool(r.status == 200)

    wait_until(healthy, 60, "kube-controller-manager /healthz", interval=0.2)


def apply_crds(cp: ControlPlane, crds: list[dict[str, Any]]) -> None:
    """Create CRDs and wait until each is Established."""
    import json

    for crd in crds:
        req = urllib.request.Request(
            cp.server + "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            data=json.dumps(crd).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            urllib.request.urlopen(req, context=cp.ssl_context(), timeout=10).read()
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"CRD {crd['metadata']['name']} rejected: {e.read().decode()}") from None

        def established(name: str = crd["metadata"]["name"]) -> bool:
            code, body = cp.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
            conds = json.loads(body).get("status", {}).get("conditions", []) if code == 200 else []
            return any(c["type"] == "Established" and c["status"] == "True" for c in conds)

        wait_until(established, 30, f"CRD {crd['metadata']['name']} Established")


@contextlib.contextmanager
def control_plane(
    crds: list[dict[str, Any]] | None = None, controllers: str = CONTROLLERS, feature_gates: str = ""
) -> Iterator[ControlPlane]:
    """Start etcd + kube-apiserver (+ CRDs) + kube-controller-manager running ``controllers`` (its
    ``--controllers``; empty: no controller-manager); stop them and remove the data after.

    ``feature_gates`` (``Name=true,...``) goes to both the API server and the controller-manager."""
    bins = ensure_binaries()
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else None  # etcd fsyncs: tmpfs keeps tests fast
    workdir = Path(tempfile.mkdtemp(prefix="duplex-kube-", dir=base))
    gates = [f"--feature-gates={feature_gates}"] if feature_gates else []
    cp: ControlPlane | None = None
    try:
        cp = start_apiserver(workdir, bins, extra_args=gates)
        if crds:
            apply_crds(cp, crds)
        if controllers:
            start_controller_manager(cp, bins, controllers, extra_args=gates)
        yield cp
    finally:
        if cp is not None:
            cp.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    # (never put the repository root on sys.path: its operator/ folder would shadow the stdlib module)
    from duplex.operator.crd import crd_manifest

    with control_plane([crd_manifest()]) as plane:
        print(f"KUBECONFIG={plane.kubeconfig}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                plane.check_alive()
                time.sleep(5)
