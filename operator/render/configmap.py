"""The ConfigMap every process of a model reads: ``engine.json`` (``duplex engine --config``),
``gateway.json`` (``duplex picker`` and ``duplex envoy --config``) and, with agent workers, ``agent.json``. Each
file holds only sections its command loads (``duplex.serving.cli.CONFIG_SECTIONS``)."""

from __future__ import annotations

import hashlib
import json

from ..naming import CONFIG_DIR, ModelRef, agent_stream_prefix
from ..resolve import Resolved
from .common import Manifest
from .engine import realtime_port
from .gateway import CLIENT_CA_DIR, TLS_DIR


def engine_config(resolved: Resolved, stream_prefix: str) -> dict[str, object]:
    """What ``duplex engine --config`` reads: the ModelSource and the EngineSpec (snake_case, as the
    serving specs parse it), with ``shards`` resolved to a number and the agent's key prefix."""
    spec = resolved.spec
    engine = spec.engine.model_dump(mode="json")
    engine["shards"] = resolved.shards
    engine["http_port"] = realtime_port(spec)
    engine["agent_stream_prefix"] = stream_prefix
    return {"model": spec.model.model_dump(mode="json"), "engine": engine}


def engine_config_map(ref: ModelRef, resolved: Resolved) -> Manifest:
    spec = resolved.spec
    gateway = spec.gateway.model_dump(mode="json")
    if spec.gateway.auth_secret:
        gateway["api_keys_file"] = f"{CONFIG_DIR}/auth/keys"  # where front.py mounts the Secret
    else:
        gateway["open_access"] = True  # no auth Secret: the documented "open, for local use" mode
    if spec.gateway.tls_secret:
        gateway["tls_cert_file"] = f"{TLS_DIR}/tls.crt"  # where front.py mounts the Secret
        gateway["tls_key_file"] = f"{TLS_DIR}/tls.key"
    if spec.gateway.client_ca_secret:
        gateway["client_ca_file"] = f"{CLIENT_CA_DIR}/ca.crt"  # where front.py mounts the Secret
    prefix = agent_stream_prefix(ref)  # one model's engines and workers meet on the same keys, no other model's
    data: dict[str, dict[str, object]] = {
        "engine.json": engine_config(resolved, prefix),
        "gateway.json": {"gateway": gateway},
    }
    if spec.agent.workers > 0:
        data["agent.json"] = {"agent": {**spec.agent.model_dump(mode="json"), "stream_prefix": prefix}}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": ref.metadata(ref.config_map, "config"),
        "data": {k: json.dumps(v, sort_keys=True, indent=2) + "\n" for k, v in data.items()},
    }


def config_hash(config_map: Manifest) -> str:
    """Digest of the ConfigMap's data; put on pod templates so a config change rolls the pods."""
    blob = json.dumps(config_map["data"], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
