"""The tool plugin interface: a name, a description, a pydantic arguments model (its JSON schema is the
contract; validation happens before a job is queued), ``async run(args) -> str`` and a timeout."""

from __future__ import annotations

import abc
import importlib
import json
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

A = TypeVar("A", bound=BaseModel)


class ToolError(Exception):
    """A clean, final failure of a call (bad input the schema could not catch, a refused URL, ...): the job
    fails with this message and is not retried."""


class InvalidArguments(ToolError):
    """Arguments that do not match the tool's model; the message names the field."""


class Arguments(BaseModel):
    """Base of the tools' argument models: unknown fields are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


def _describe(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        field = ".".join(str(x) for x in err["loc"]) or "arguments"
        parts.append(f"{field}: {err['msg']}")
    return "; ".join(parts)


class Tool(abc.ABC, Generic[A]):
    """A tool workers can run. Subclasses set ``name``, ``description``, ``arguments`` and implement ``run``."""

    name: ClassVar[str]
    description: ClassVar[str]
    arguments: type[A]
    timeout_s: float = 30.0

    def schema(self) -> dict[str, Any]:
        """The JSON schema of the arguments."""
        return self.arguments.model_json_schema()

    def parse(self, arguments_json: str) -> A:
        """Validate JSON arguments; raises InvalidArguments naming the tool and the field."""
        try:
            raw = json.loads(arguments_json or "{}")
        except json.JSONDecodeError as e:
            raise InvalidArguments(f"invalid arguments for {self.name}: not JSON ({e.msg} at {e.pos})") from None
        if not isinstance(raw, dict):
            raise InvalidArguments(f"invalid arguments for {self.name}: expected a JSON object")
        try:
            return self.arguments.model_validate(raw)
        except ValidationError as e:
            raise InvalidArguments(f"invalid arguments for {self.name}: {_describe(e)}") from None

    @abc.abstractmethod
    async def run(self, args: A) -> str:
        """Do the work; raise ToolError for a final failure. Any other exception is retried."""


class ToolRegistry:
    """Tools by name."""

    def __init__(self, tools: Iterable[Tool[Any]] = ()) -> None:
        self._tools: dict[str, Tool[Any]] = {}
        for t in tools:
            self.add(t)

    def add(self, tool: Tool[Any]) -> None:
        if tool.name in self._tools:
            raise ValueError(f"tool {tool.name!r} registered twice")
        self._tools[tool.name] = tool

    def get(self, name: str) -> Tool[Any] | None:
        return self._tools.get(name)

    def names(self) -> list[str]:
        return sorted(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool[Any]]:
        return iter(self._tools.values())


def load_plugin(ref: str) -> list[Tool[Any]]:
    """Tools from ``module:attribute``: a Tool, a list of Tools, or a zero-argument callable returning either."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"agent.plugins: {ref!r} is not MODULE:ATTRIBUTE")
    try:
        obj: Any = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"agent.plugins: cannot load {ref!r}: {e}") from None
    if callable(obj) and not isinstance(obj, Tool):
        obj = obj()
    tools = obj if isinstance(obj, list) else [obj]
    for t in tools:
        if not isinstance(t, Tool):
            raise ValueError(f"agent.plugins: {ref!r} gave {type(t).__name__}, not a Tool")
    return tools
