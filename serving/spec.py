"""Typed specs of the serving processes. Each is the single source for its process's CLI flags, the matching
part of the ``DuplexModel`` CRD schema and the Helm values — never three copies."""

from __future__ import annotations

from importlib.metadata import version
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

PACKAGE_VERSION = version("duplex")
"""The installed package's version (= ``duplex.__version__``, which a test checks): the default image tag.
Read from the distribution, not ``duplex/__init__``, so scripts that put a folder named ``duplex`` first on
``sys.path`` (``charts/regenerate.py`` next to ``charts/duplex``) still import this module."""

SPEC_CONFIG = ConfigDict(extra="forbid", use_attribute_docstrings=True, alias_generator=to_camel, populate_by_name=True)
"""Every spec: unknown fields rejected, field docs from docstrings, camelCase names in Kubernetes objects
(``gpuMemoryGib``; ``by_alias`` dumps) and snake_case ones in Python, config files and ``--set``."""


class _Spec(BaseModel):
    model_config = SPEC_CONFIG


class ResourceSpec(_Spec):
    """Container resources (Kubernetes quantities)."""

    cpu: str = "2"
    """CPU request and limit."""
    memory: str = "4Gi"
    """Memory request and limit."""


class EngineSpec(_Spec):
    """A model replica: rank 0 batches sessions and steps the model; ranks 1..N-1 hold the other experts."""

    backend: Literal["torch", "tensorrt-llm"] = "torch"
    """``torch`` runs everywhere; ``tensorrt-llm`` uses TensorRT-LLM's fused MoE/attention on GPU images."""
    image: str = f"duplex:{PACKAGE_VERSION}"
    """Container image of the engine, front and agent pods: a pinned tag (or digest), never ``latest``; the
    default is this package's version."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the model runs; auto = cuda when a GPU is visible."""
    resources: ResourceSpec = ResourceSpec()
    """Resources of each rank's container."""
    gpus_per_shard: int = Field(0, ge=0)
    """GPUs (``nvidia.com/gpu``) per rank; 0 = CPU."""
    gpu_memory_gib: float = Field(80.0, gt=0)
    """Memory of each GPU, for ``shards: auto``."""
    shards: int | Literal["auto"] = 1
    """Ranks per replica (expert-parallel world size); ``auto`` asks the size planner."""
    chunk_ms: int = Field(200, ge=80, le=400)
    """Micro-turn length: audio per client chunk and per model step."""
    max_sessions: int = Field(64, ge=1)
    """Concurrent sessions per replica; beyond it the engine answers RESOURCE_EXHAUSTED (the session picker places
    no session on a full replica)."""
    port: int = Field(7070, ge=1, le=65535)
    """gRPC port of rank 0."""
    http_port: int = Field(0, ge=0, le=65535)
    """HTTP port of rank 0's OpenAI-Realtime-compatible WebSocket ``GET /v1/realtime`` (docs/realtime.md),
    behind Envoy and the session picker, which check keys; 0 = off. In a cluster the operator serves it on
    7071 when ``gateway.http_port`` is set and this is 0."""
    metrics_port: int = Field(9090, ge=0, le=65535)
    """Prometheus port (0 = off)."""
    host: str = "0.0.0.0"
    """Address the gRPC and metrics servers bind to (``127.0.0.1`` for local use)."""
    cohorts: int = Field(4, ge=1, le=64)
    """Phase cohorts: the slots are split into this many contiguous blocks, each stepped at its own phase
    of the chunk period, so a chunk waits at most about ``chunk_ms / cohorts`` for its step."""
    grace_ms: float = Field(15.0, ge=0.0)
    """How long past its phase tick a cohort waits for late members before stepping without them."""
    lost_after_chunks: int = Field(3, ge=1)
    """A session more than this many chunks behind its cohort's steps (its client sent nothing meanwhile) gets
    silence processed in place of its oldest missing chunk (the client is warned; the real chunk is dropped
    when it finally arrives)."""
    migrate_after_misses: int = Field(3, ge=1)
    """A session whose chunks miss its cohort's step this many times in a row moves to a better-phased cohort."""
    split_after_ms: float = Field(8.0, ge=0.0)
    """While the step thread has spare time (see ``split_below_load``), members whose chunks have waited this
    long for the rest of their cohort are stepped without them: an extra step that trades idle compute for
    latency at low load. 0 = never."""
    split_below_load: float = Field(0.3, ge=0.0, le=1.0)
    """Share of the last two chunk periods the step thread may have been busy for ``split_after_ms`` to apply."""
    max_pending_chunks: int = Field(8, ge=2)
    """Received-but-unprocessed chunks per session; beyond it the engine stops reading the client's stream
    (HTTP/2 flow control pushes back on a client that sends faster than real time)."""
    max_send_backlog: int = Field(50, ge=2)
    """Server events waiting to be written to a client; a client that does not read for this long is
    closed with RESOURCE_EXHAUSTED."""
    max_message_bytes: int = Field(1 << 20, ge=1024)
    """Largest accepted client message; larger ones fail with RESOURCE_EXHAUSTED."""
    resume_grace_s: float = Field(10.0, ge=0.0, le=3600.0)
    """How long a session whose stream dropped keeps its slot and state for a resume
    (``SessionStart.resume_token``); its slot counts as occupied meanwhile. 0 = no resumption."""
    drain_grace_s: float = Field(30.0, ge=0.0, le=3600.0)
    """On SIGTERM: stop taking sessions (health NOT_SERVING: the session picker places none here) and give the
    live conversations this long to end; those still live then end UNAVAILABLE."""
    resume_replay_events: int = Field(128, ge=1, le=4096)
    """Server events a session keeps after sending them, re-sent on resume when the client had not received
    them (those in flight when the stream dropped)."""
    served_model_name: str = ""
    """Name clients pass in ``SessionStart.model`` ("" = the model's preset name)."""
    torch_threads: int = Field(0, ge=0)
    """Intra-op threads of the step thread (0 = torch's default)."""
    tools: list[str] = Field(default_factory=lambda: ["clock", "calculator"])
    """Tools a session may ask for in ``SessionStart.tools``; others are rejected with INVALID_ARGUMENT."""
    batch_invariant: bool = False
    """Step the model with batch-invariant kernels: a session's outputs are bit-identical whatever other
    sessions share its steps, which slot it has and when others join or leave (reproducible conversations for
    debugging and evaluation). It pads small GEMMs and expert groups to fixed row counts, which cost about a
    third more step time at cohort-sized batches (docs/benchmarks.md), so it is off by default and on in
    ``duplex up``."""
    redis_url: str = ""
    """Redis of the background agent ("" = no agent: an ``AgentRequest`` gets FAILED at once). The engine CLI
    also reads ``$DUPLEX_REDIS_URL``, which the operator renders."""
    agent_stream_prefix: str = Field("duplex", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    """The agent deployment's ``agent.stream_prefix``: engine and workers of one model must agree on it."""
    agent_deadline_s: float = Field(30.0, gt=0, le=86_400)
    """Deadline of a tool call whose ``AgentRequest.deadline_s`` is 0, and of every model-initiated call."""
    agent_replica_id: str = Field("", max_length=128, pattern=r"^[A-Za-z0-9_.:-]*$")
    """Names this replica's results stream ("" = HOSTNAME:PORT; a restarted pod keeps its name, so it re-reads
    what was delivered to it and not acknowledged)."""


class GatewaySpec(_Spec):
    """Front door: Envoy carries every stream; the session picker (its ext_authz service) checks API keys and
    quotas and places each new session on the engine replica with the most free slots, once."""

    replicas: int = Field(1, ge=1)
    """Front pods (Envoy and the session picker); the fewest when ``max_replicas`` autoscales them."""
    max_replicas: int = Field(0, ge=0)
    """Most front pods: above ``replicas``, a HorizontalPodAutoscaler scales the front Deployment between the two
    on CPU (``target_cpu_percent``); 0 = a fixed ``replicas``."""
    target_cpu_percent: int = Field(70, ge=1, le=100)
    """Average CPU use of the front pods (percent of their containers' requests) their autoscaler aims for."""
    service_type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    """Kubernetes Service type of the public endpoint."""
    auth_secret: str | None = None
    """Secret holding API keys (key ``keys``, one per line); unset = open, for local use only."""
    tls_secret: str | None = None
    """Secret with ``tls.crt``/``tls.key`` for the public endpoint."""
    client_ca_secret: str | None = None
    """Secret with ``ca.crt``: Envoy requires client certificates signed by it (mutual TLS; needs
    ``tls_secret``). The operator mounts it and sets ``client_ca_file``."""
    port: int = Field(8080, ge=1, le=65535)
    """Public gRPC port."""
    metrics_port: int = Field(9091, ge=0, le=65535)
    """Prometheus port (0 = off)."""
    host: str = "0.0.0.0"
    """Address the front door's listeners and metrics servers bind to."""
    engines: list[str] = Field(default_factory=list)
    """Engine replicas (rank 0 ``HOST:PORT`` each) to route conversations to."""
    engine_selector: str = ""
    """Label selector of the engines' leader EndpointSlices: the session picker lists and watches them through
    the Kubernetes API and routes to their ready addresses as they come and go (the operator sets it for its
    front pods); empty = the fixed ``engines`` list."""
    engine_namespace: str = ""
    """Namespace of the EndpointSlices ``engine_selector`` picks (empty = the picker's own, in a pod)."""
    api_keys_file: str | None = None
    """Keys file (the mounted ``auth_secret``): one ``NAME:sha256:HEX`` line per key, from ``duplex keys hash``;
    ``#`` comments and blank lines ignored. A plaintext line is accepted with a deprecation warning."""
    tls_cert_file: str | None = None
    """PEM certificate chain of the public endpoint (the mounted ``tls_secret``'s ``tls.crt``); with
    ``tls_key_file`` Envoy serves TLS."""
    tls_key_file: str | None = None
    """PEM private key of the public endpoint (the mounted ``tls_secret``'s ``tls.key``); set together with
    ``tls_cert_file``."""
    client_ca_file: str | None = None
    """PEM CA bundle of client certificates: when set (with ``tls_cert_file``/``tls_key_file``), Envoy
    requires mutual TLS and refuses clients without a certificate that this CA signed. API keys still apply."""
    envoy_concurrency: int = Field(2, ge=1, le=64)
    """Worker threads of Envoy in each front pod (``duplex envoy``; its container's CPU limit is 2)."""
    key_max_sessions: int = Field(0, ge=0)
    """Concurrent conversations one API key may hold, as each front pod's session picker counts them (0 = no
    limit); beyond it RESOURCE_EXHAUSTED with ``retry-after-ms``."""
    key_starts_per_s: float = Field(0.0, ge=0.0)
    """Session starts per second one API key may make, as each front pod's session picker counts them (token
    bucket; 0 = no limit)."""
    key_starts_burst: int = Field(5, ge=1)
    """Session starts one API key may make back to back before ``key_starts_per_s`` applies."""
    open_access: bool = False
    """Accept unauthenticated clients. Required to start without ``api_keys_file``; for local use only."""
    drain_grace_s: float = Field(30.0, ge=0.0)
    """On SIGTERM: stop taking new conversations and give live ones this long to finish."""
    retry_after_s: float = Field(1.0, gt=0.0)
    """Retry hint sent with RESOURCE_EXHAUSTED when every replica is full."""
    health_interval_s: float = Field(0.5, gt=0.0)
    """How often the session picker polls each engine replica's health and load."""
    max_message_bytes: int = Field(1 << 20, ge=1024)
    """Largest accepted client message (gRPC messages, and Realtime WebSocket frames: a larger frame closes
    that WebSocket with 1009)."""
    http_port: int = Field(0, ge=0, le=65535)
    """Public HTTP port of the OpenAI-Realtime-compatible endpoint (docs/realtime.md), Envoy's second listener:
    ``GET /v1/realtime`` WebSocket upgrades go to the engines' ``engine.http_port``, client secrets, the
    page's config and the browser page to the session picker's HTTP app; 0 = off."""


class RedisSpec(_Spec):
    """Redis for the background agent's job streams."""

    managed: bool = True
    """Deploy a Redis next to the model; false = use ``url`` / ``url_secret``."""
    url: str | None = None
    """External Redis URL (``redis://host:port/db``)."""
    url_secret: str | None = None
    """Secret with key ``url`` holding the external Redis URL."""
    image: str = "redis:7"
    """Image of the managed Redis (used when ``managed`` is true)."""


class AgentSpec(_Spec):
    """Background agent: Redis Streams workers running slow tools, results injected into the talk."""

    workers: int = Field(0, ge=0)
    """Agent worker pods (0 = no background agent: the default until ``duplex agent`` ships)."""
    tools: list[str] = Field(default_factory=lambda: ["clock", "calculator"])
    """Tools sessions may call."""
    redis: RedisSpec = RedisSpec()
    """Where job streams live."""
    stream_prefix: str = Field("duplex", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    """Prefix of every Redis key of this deployment (``{prefix}:jobs``, ...); engines and workers of one model
    must agree on it."""
    concurrency: int = Field(8, ge=1, le=1024)
    """Jobs one worker process runs at the same time."""
    claim_idle_ms: int = Field(30_000, ge=10)
    """A job delivered to a worker that has not reported for this long (it died) is claimed by another.
    Running jobs are kept fresh by their worker every third of this."""
    max_deliveries: int = Field(3, ge=1)
    """Deliveries after which a job that keeps crashing its worker goes to the dead-letter stream (FAILED)."""
    tool_timeout_s: float = Field(30.0, gt=0)
    """Upper bound of any tool's run time (a tool's own timeout may be shorter); past it the job FAILS."""
    jobs_maxlen: int = Field(10_000, ge=100)
    """Approximate length the jobs stream is trimmed to (``MAXLEN ~``)."""
    results_maxlen: int = Field(10_000, ge=100)
    """Approximate length each engine replica's results stream is trimmed to."""
    dead_letter_maxlen: int = Field(10_000, ge=100)
    """Approximate length the dead-letter stream is trimmed to."""
    result_ttl_s: int = Field(86_400, ge=1)
    """How long a call's idempotency guard lives (a redelivered call within it yields no second result)."""
    cancel_ttl_s: int = Field(3_600, ge=1)
    """How long an ended session's cancel marker lives (its queued jobs are skipped meanwhile)."""
    block_ms: int = Field(1_000, ge=10)
    """Longest a worker waits in one ``XREADGROUP`` before it looks at the claim timer again."""
    reconnect_initial_ms: int = Field(100, ge=1)
    """First wait after Redis became unreachable; doubled per failed try up to ``reconnect_max_ms``."""
    reconnect_max_ms: int = Field(5_000, ge=1)
    """Longest wait between reconnect tries."""
    drain_grace_s: float = Field(10.0, ge=0.0)
    """On SIGTERM: how long running jobs may finish; the rest stay pending and another worker claims them."""
    docs_root: str | None = None
    """Mounted document folder ``doc_search`` searches (unset = the tool answers that none is mounted)."""
    http_allow_hosts: list[str] = Field(default_factory=list)
    """Hosts ``http_get`` may fetch (names or IP literals; ``*`` = any host with a public address). An IP
    literal here is allowed even if it is private."""
    http_allow_private: bool = False
    """Let ``http_get`` reach private, loopback and link-local addresses (trusted networks and tests only)."""
    http_max_bytes: int = Field(65_536, ge=1)
    """Response bytes ``http_get`` reads."""
    http_timeout_s: float = Field(10.0, gt=0)
    """Time limit of one ``http_get`` call, redirects included."""
    http_max_redirects: int = Field(3, ge=0, le=10)
    """Redirects ``http_get`` follows (each one checked like the first URL)."""
    plugins: list[str] = Field(default_factory=list)
    """Extra tools, ``module:attribute`` (a Tool, a list of Tools or a factory); add their names to ``tools``."""
    metrics_port: int = Field(9092, ge=0, le=65535)
    """Prometheus port of a worker process (0 = off)."""
    host: str = "0.0.0.0"
    """Address the metrics server binds to."""
