"""Tools: the plugin interface and the built-ins (calculator, clock, doc_search, http_get)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from duplex.serving.spec import AgentSpec

from .base import Arguments, InvalidArguments, Tool, ToolError, ToolRegistry, load_plugin
from .calculator import Calculator
from .clock import Clock
from .doc_search import DocSearch
from .http_get import HttpGet, HttpPolicy

__all__ = [
    "Arguments",
    "InvalidArguments",
    "Tool",
    "ToolError",
    "ToolRegistry",
    "builtin_tools",
    "load_plugin",
    "registry_for",
]


def builtin_tools(spec: AgentSpec) -> list[Tool[Any]]:
    """The built-in tools, configured from the agent spec."""
    policy = HttpPolicy(
        allow_hosts=list(spec.http_allow_hosts),
        allow_private=spec.http_allow_private,
        max_bytes=spec.http_max_bytes,
        timeout_s=spec.http_timeout_s,
        max_redirects=spec.http_max_redirects,
    )
    return [Calculator(), Clock(), DocSearch(Path(spec.docs_root) if spec.docs_root else None), HttpGet(policy)]


def registry_for(spec: AgentSpec, extra: list[Tool[Any]] | None = None) -> ToolRegistry:
    """Every tool known to a deployment: the built-ins, ``spec.plugins`` and ``extra``, restricted to
    ``spec.tools`` (the deployment's list)."""
    tools = [*builtin_tools(spec), *(t for ref in spec.plugins for t in load_plugin(ref)), *(extra or [])]
    known = {t.name for t in tools}
    unknown = [n for n in spec.tools if n not in known]
    if unknown:
        raise ValueError(
            f"agent.tools: unknown tool(s) {', '.join(map(repr, unknown))} (known: {', '.join(sorted(known))})"
        )
    return ToolRegistry(t for t in tools if t.name in spec.tools)
