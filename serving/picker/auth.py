"""API keys: loaded from a file of SHA-256 hashes (the mounted Secret), compared in constant time.

A keys file line is ``NAME:sha256:HEX`` or ``sha256:HEX`` (``duplex keys hash`` prints one from a key read on
stdin). The session picker never holds a key in the clear: a presented key is hashed, and its 32-byte digest is
compared with *every* stored digest by ``hmac.compare_digest``, so neither the number of comparisons nor their
length depends on which key was sent or where a wrong key differs. A plaintext line (an older keys file) is
still accepted, hashed on load, with a deprecation warning naming the line — never the key."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

HASH_SCHEME = "sha256"
DIGEST_BYTES = 32
_HASHED = re.compile(r"^(?:(?P<name>[A-Za-z0-9_.@-]{1,64}):)?sha256:(?P<hex>[0-9a-fA-F]*)$")
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
ANONYMOUS = "anonymous"
"""Key id of every caller of an ``open_access`` front door (they share one set of quotas)."""


def digest(key: str) -> bytes:
    """The stored form of a key: its SHA-256 digest (always ``DIGEST_BYTES`` long)."""
    return hashlib.sha256(key.encode()).digest()


def key_line(key: str, name: str = "") -> str:
    """The keys-file line of ``key``: ``NAME:sha256:HEX`` (or ``sha256:HEX`` without a name)."""
    if not key:
        raise ValueError("key: empty; a key must have at least one character")
    if any(c.isspace() for c in key):
        raise ValueError("key: contains whitespace (a keys file line cannot hold it; send keys without it)")
    if name and not _NAME.match(name):
        raise ValueError(f"name: {name!r} must be 1-64 of A-Z a-z 0-9 _ . @ -")
    return f"{name + ':' if name else ''}{HASH_SCHEME}:{digest(key).hex()}"


@dataclass(frozen=True)
class StoredKey:
    """One accepted key, as the picker keeps it."""

    name: str
    """Key id: quotas are counted per id and it is the only thing about a key that is ever logged."""
    digest: bytes
    """SHA-256 of the key (``DIGEST_BYTES`` bytes)."""


@dataclass(frozen=True)
class KeyCheck:
    """Outcome of checking a caller's metadata."""

    key_id: str | None
    """Id of the matching key (``ANONYMOUS`` on an open front door); None when refused."""
    why: str | None
    """None when allowed, else the reason (for an UNAUTHENTICATED status)."""


def parse_keys_file(text: str, source: str = "api_keys_file") -> list[StoredKey]:
    """The keys of a keys file; ValueError naming ``source`` and the line for a malformed hashed line."""
    keys: list[StoredKey] = []
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _HASHED.match(line)
        if m is not None:
            hexd = m["hex"]
            if len(hexd) != 2 * DIGEST_BYTES:
                raise ValueError(
                    f"gateway: {source} line {n}: sha256 hash must be {2 * DIGEST_BYTES} hex digits, got {len(hexd)}"
                )
            keys.append(StoredKey(m["name"] or f"line-{n}", bytes.fromhex(hexd)))
        elif "sha256:" in line:
            raise ValueError(f"gateway: {source} line {n}: malformed hashed key; expected NAME:sha256:HEX")
        else:
            log.warning(
                "gateway: %s line %d holds a plaintext API key (deprecated): replace it with the output of "
                "`duplex keys hash`",
                source,
                n,
            )
            keys.append(StoredKey(f"line-{n}", digest(line)))
    return keys


class KeyRing:
    """The accepted keys (as digests); ``open_access`` accepts everyone (explicit local use only).

    ``keys`` are plaintext keys (tests, embedding), hashed here; ``hashed`` are keys as read from a keys file.
    ``compare`` is the digest comparison (``hmac.compare_digest``; injectable so a test can watch it run)."""

    def __init__(
        self,
        keys: Iterable[str] = (),
        open_access: bool = False,
        hashed: Iterable[StoredKey] = (),
        compare: Callable[[bytes, bytes], bool] = hmac.compare_digest,
    ) -> None:
        stored = [StoredKey(f"key-{i}", digest(k)) for i, k in enumerate(sorted(keys))] + list(hashed)
        if not stored and not open_access:
            raise ValueError(
                "gateway: no API keys configured (api_keys_file) and open_access is false; "
                "refusing to start an open endpoint by accident"
            )
        self.stored = stored
        self.open_access = open_access
        self._compare = compare

    @classmethod
    def from_file(cls, path: str | None, open_access: bool = False) -> KeyRing:
        hashed: list[StoredKey] = []
        if path:
            try:
                text = Path(path).read_text()
            except OSError as e:
                raise ValueError(f"gateway: api_keys_file {path!r} cannot be read: {e.strerror or e}") from None
            hashed = parse_keys_file(text)
            if not hashed and not open_access:
                raise ValueError(f"gateway: api_keys_file {path!r} holds no keys")
        return cls(open_access=open_access, hashed=hashed)

    def identify(self, metadata: dict[str, str]) -> KeyCheck:
        """Which key the caller holds (its id), or why it is refused."""
        if self.open_access:
            return KeyCheck(ANONYMOUS, None)
        key = metadata.get("x-api-key", "")
        auth = metadata.get("authorization", "")
        if not key and auth.lower().startswith("bearer "):
            key = auth[7:].strip()
        if not key:
            return KeyCheck(None, "missing API key: send metadata `authorization: Bearer KEY` or `x-api-key: KEY`")
        presented = digest(key)
        found: str | None = None
        for stored in self.stored:  # every stored digest, no early exit: the work is the same for any key
            if self._compare(presented, stored.digest) and found is None:
                found = stored.name
        if found is None:
            return KeyCheck(None, "invalid API key")
        return KeyCheck(found, None)

    def check(self, metadata: dict[str, str]) -> str | None:
        """None if the caller may proceed, else why not (for an UNAUTHENTICATED status)."""
        return self.identify(metadata).why
