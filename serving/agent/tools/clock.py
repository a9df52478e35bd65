"""``clock``: the current time in an IANA time zone, optionally formatted with ``strftime``."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator

from .base import Arguments, Tool, ToolError


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (expected an IANA name like 'Europe/Paris')") from None


class ClockArguments(Arguments):
    timezone: str = Field("UTC", min_length=1, max_length=64)
    """IANA time zone name, e.g. ``Europe/Paris``."""
    format: str | None = Field(None, min_length=1, max_length=64)
    """``strftime`` format; unset = ISO 8601 with the zone's offset and its name."""

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        _zone(v)
        return v


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Clock(Tool[ClockArguments]):
    name = "clock"
    description = "Current date and time in an IANA time zone."
    arguments = ClockArguments
    timeout_s = 2.0

    def __init__(self, now: Callable[[], dt.datetime] = _utc_now) -> None:
        self.now = now
        """Source of the current time (timezone-aware); injected by tests."""

    async def run(self, args: ClockArguments) -> str:
        t = self.now().astimezone(_zone(args.timezone))
        if args.format is None:
            return f"{t.isoformat(timespec='seconds')} ({args.timezone})"
        try:
            return t.strftime(args.format)
        except ValueError as e:
            raise ToolError(f"format: {e}") from None
