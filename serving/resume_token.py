"""Resume tokens as the gateway hands them out: ``g1.REPLICA.ENGINE_TOKEN``.

The engine issues ``e1.HANDLE.SECRET`` (``serving/engine/resume.py``); the gateway prefixes the address of the
replica that holds the session (URL-safe base64), so any gateway — this one after a restart, or another
replica of it — routes a resume there without shared state. The replica part is not secret and needs no
signature: a gateway only routes to replicas of its own ``engines`` list, and a token whose replica part was
changed names a session the other replica does not hold (its secret is checked there, in constant time).
Torch-free: the gateway imports it.
"""

from __future__ import annotations

import base64
import binascii

GATEWAY_PREFIX = "g1"
KEY_ID_METADATA = "x-duplex-key-id"
"""Metadata the gateway puts on its call to the engine: the id of the API key the client authenticated with
(never the key itself). The engine binds a session's token to it. Empty on a direct engine connection."""
PLACEMENT_METADATA = "x-duplex-placement"
"""Metadata the session picker sets on a stream it placed: ``PICKER_ID.NUMBER`` (numbers rise per picker); the
engine reports the highest it has seen per picker in ``ReplicaLoad.placements_seen``."""
RESUMABLE_METADATA = "x-duplex-resumable"
"""``0`` on an engine call whose client cannot resume (the Realtime endpoint): the engine issues no token and
frees the slot at once when the stream drops."""
RESUME_REPLICA_METADATA = "x-duplex-resume-replica"
"""Metadata of a resume sent through Envoy: the engine replica that holds the session (``SessionReady.replica``);
the session picker routes the stream there, or answers UNAVAILABLE with ``HOLDER_LOST_METADATA`` when that
replica is down. Naming a replica grants nothing: the engine checks the token and the key it is bound to."""
HOLDER_LOST_METADATA = ("x-duplex-resume", "holder-lost")
"""Trailing metadata on the gateway's UNAVAILABLE to a resume whose engine replica is down (killed, or its
connection dropped): the session's state went with it, so the client stops resuming and reports UNAVAILABLE
at once, where an UNAVAILABLE without it (the gateway itself away) is tried again within the grace."""


def wrap(replica: str, engine_token: str) -> str:
    """The client's token: the engine's, prefixed with the replica address that holds the session."""
    addr = base64.urlsafe_b64encode(replica.encode()).decode().rstrip("=")
    return f"{GATEWAY_PREFIX}.{addr}.{engine_token}"


def unwrap(token: str) -> tuple[str, str]:
    """(replica address, engine token) of a gateway token; ValueError naming the field when malformed."""
    parts = token.split(".", 2)
    if len(parts) != 3 or parts[0] != GATEWAY_PREFIX or not parts[2]:
        raise ValueError("start.resume_token: malformed (expected the token of a SessionReady from this gateway)")
    try:
        padded = parts[1] + "=" * (-len(parts[1]) % 4)
        replica = base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        replica = ""
    if not replica:
        raise ValueError("start.resume_token: malformed replica part")
    return replica, parts[2]
