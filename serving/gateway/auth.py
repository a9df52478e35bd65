"""API keys: loaded from a file (the mounted Secret), compared in constant time."""

from __future__ import annotations

import hmac
from pathlib import Path


class KeyRing:
    """The accepted keys; ``open_access`` accepts everyone (explicit local use only)."""

    def __init__(self, keys: set[str], open_access: bool = False) -> None:
        if not keys and not open_access:
            raise ValueError(
                "gateway: no API keys configured (api_keys_file) and open_access is false; "
                "refusing to start an open endpoint by accident"
            )
        self.keys = keys
        self.open_access = open_access

    @classmethod
    def from_file(cls, path: str | None, open_access: bool = False) -> KeyRing:
        keys: set[str] = set()
        if path:
            for line in Path(path).read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    keys.add(line)
            if not keys and not open_access:
                raise ValueError(f"gateway: api_keys_file {path!r} holds no keys")
        return cls(keys, open_access)

    def check(self, metadata: dict[str, str]) -> str | None:
        """None if the caller may proceed, else why not (for an UNAUTHENTICATED status)."""
        if self.open_access:
            return None
        key = metadata.get("x-api-key", "")
        auth = metadata.get("authorization", "")
        if not key and auth.lower().startswith("bearer "):
            key = auth[7:].strip()
        if not key:
            return "missing API key: send metadata `authorization: Bearer KEY` or `x-api-key: KEY`"
        if not any(hmac.compare_digest(key.encode(), k.encode()) for k in self.keys):
            return "invalid API key"
        return None
