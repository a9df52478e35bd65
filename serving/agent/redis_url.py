"""The background agent's Redis URL as ``duplex engine`` and ``duplex agent`` take it: ``--redis-url URL``, or
``--redis-url-file PATH`` (``$DUPLEX_REDIS_URL_FILE``), a file holding it — how the operator passes a URL kept in a
Secret (``spec.agent.redis.urlSecret``, mounted read-only), so the Secret never becomes an environment variable.
Logs show the URL with its password masked (:func:`redact`)."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

URL_FILE_ENV = "DUPLEX_REDIS_URL_FILE"
"""Environment variable of ``--redis-url-file`` in both commands."""


def read_url_file(path: str | Path) -> str:
    """The URL in ``path`` (surrounding whitespace and a final newline ignored); ValueError naming the file
    when it cannot be read or holds no single URL."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ValueError(f"--redis-url-file {path}: {reason}") from None
    url = text.strip()
    if not url or any(c.isspace() for c in url):
        raise ValueError(
            f"--redis-url-file {path}: expected one Redis URL (redis://HOST:PORT/DB), found {len(text)} bytes"
        )
    return url


def url_from_flags(url: str, url_file: str) -> str:
    """``--redis-url``, else the contents of ``--redis-url-file``, else ""; ValueError when both are given or the
    file is unusable."""
    if url and url_file:
        raise ValueError(f"--redis-url and --redis-url-file ({URL_FILE_ENV}): pass one, not both")
    return read_url_file(url_file) if url_file else url


def redact(url: str) -> str:
    """``url`` with its password (``redis://USER:PASSWORD@HOST``, ``redis://:PASSWORD@HOST``) shown as ``***``."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
