"""Metadata names of the front door and the engine: the key id and placement the session picker sets on a
stream it allowed, and the resume hints. The engine issues resume tokens itself (``e1.HANDLE.SECRET``,
``serving/engine/resume.py``); a client's resume names the replica holding its session in
``RESUME_REPLICA_METADATA`` (``SessionReady.replica``), so any Envoy and picker — after a restart, or another
front replica — route it there without shared state. Torch-free: the picker imports it."""

from __future__ import annotations

KEY_ID_METADATA = "x-duplex-key-id"
"""Metadata the session picker sets on a stream it allowed: the id of the API key the client authenticated with
(never the key itself; Envoy replaces whatever the client sent). The engine binds a session's token to it.
Empty on a direct engine connection."""
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
"""Trailing metadata on the picker's UNAVAILABLE to a resume whose engine replica is down or unknown: the
session's state went with it, so the client stops resuming and reports UNAVAILABLE at once, where an
UNAVAILABLE without it (the front door itself away) is tried again within the grace."""
