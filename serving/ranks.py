"""The rank of a shard-group pod, from its StatefulSet ordinal.

One parser for everything that needs it: ``duplex engine --rank-from-hostname``, the engine's readiness
probe (rendered by the operator) and the operator's tests. Kept free of heavy imports so that the probe's
``python3 -c`` stays cheap and so that serving never imports the operator's kopf handlers.
"""

from __future__ import annotations

import re

_ORDINAL = re.compile(r"-(\d+)$")


def rank_from_hostname(hostname: str) -> int:
    """Rank of a StatefulSet pod: the ordinal after the last dash (``m-engine-0-3`` -> 3)."""
    m = _ORDINAL.search(hostname)
    if m is None:
        raise ValueError(f"hostname {hostname!r} does not end in a StatefulSet ordinal (-0, -1, ...)")
    return int(m.group(1))
