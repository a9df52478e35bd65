"""Settings of a ``duplex`` command from ``--config FILE.json`` and ``--set SECTION.FIELD=VALUE`` (pydantic-settings).

A config file holds one object per section (``{"engine": EngineSpec, "model": ModelSource}``, what the operator
renders into its ConfigMap); each ``--set`` overrides one field of one section, nested fields with dots
(``engine.resources.cpu=4``), lists as JSON or comma-separated (``gateway.engines=["h:7070"]``). Commands call
:func:`load_section` once per section they read; any mistake is a :class:`ConfigError` naming the field.
"""

from __future__ import annotations

import types
from collections.abc import Collection
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, Field, ValidationError, create_model
from pydantic.alias_generators import to_snake
from pydantic_settings import (
    BaseSettings,
    CliSettingsSource,
    JsonConfigSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

_M = TypeVar("_M", bound=BaseModel)


class ConfigError(ValueError):
    """A config file or ``--set`` the command cannot use; the message names the field."""


class _Sections(BaseSettings):
    """Base of the per-call settings class: one field per section, read from the file and ``--set`` only."""

    model_config = SettingsConfigDict(extra="ignore")  # the file's other sections belong to other calls

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # No environment, dotenv or secrets: what a process runs with is its file and its flags, nothing hidden.
        return (init_settings,)


def _field_path(loc: tuple[int | str, ...]) -> str:
    """``("engine", "maxSessions")`` -> ``engine.max_sessions``: the names a user writes in files and --set."""
    return ".".join(to_snake(p) if isinstance(p, str) else f"[{p}]" for p in loc)


def _errors(e: ValidationError, origin: str, section: str | None = None) -> ConfigError:
    """One line naming every bad field; ``section`` prefixes locations that lack it (a section validated alone)."""
    prefix: tuple[str, ...] = (section,) if section else ()
    return ConfigError(
        "; ".join(f"{origin}: {_field_path((*prefix, *err['loc']))}: {err['msg']}" for err in e.errors())
    )


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds (``Resources``, ``Resources | None``), or None for a plain value."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, types.UnionType):
        models = [m for m in map(_submodel, get_args(annotation)) if m is not None]
        return models[0] if len(models) == 1 else None
    return None


def _cli_key(model: type[BaseModel], section: str, field: str) -> str:
    """``top_k`` -> the key the CLI source parses for that field: its alias where the spec has one
    (``maxSessions`` for an aliased spec), else its name (``top_k`` for :class:`ModelSource`), nested by dots."""
    keys: list[str] = []
    current: type[BaseModel] | None = model
    for i, part in enumerate(parts := field.split(".")):
        if current is None:  # below a plain value (a dict): the rest is taken as written
            keys.extend(parts[i:])
            break
        name = part if part in current.model_fields else to_snake(part)
        info = current.model_fields.get(name)
        if info is None:
            raise ConfigError(f"--set {section}.{field}: unknown field {section}.{'.'.join(parts[: i + 1])}")
        keys.append(info.alias or name)
        current = _submodel(info.annotation)
    return ".".join(keys)


def _section_args(sets: list[str], section: str, known: Collection[str], model: type[BaseModel]) -> list[str]:
    """This section's ``--set`` items as the CLI source's ``--section.fieldKey=VALUE`` arguments (the key
    is the field's alias in ``model`` where it has one: :func:`_cli_key`)."""
    args = []
    for item in sets:
        key, sep, value = item.partition("=")
        head, dot, field = key.partition(".")
        if not sep or not dot or not field:
            raise ConfigError(f"--set {item!r}: expected SECTION.FIELD=VALUE, e.g. {section}.{key or 'field'}=...")
        if head not in {section, *known}:
            raise ConfigError(
                f"--set {item!r}: unknown section {head!r} (this command reads {', '.join(sorted({section, *known}))})"
            )
        if head == section:
            args.append(f"--{section}.{_cli_key(model, section, field)}={value}")
    return args


def load_section(
    config: Path | None, sets: list[str], section: str, model: type[_M], known_sections: Collection[str] = ()
) -> _M:
    """The ``section`` of ``config`` (absent: all defaults) with the ``--set`` items for it applied on top.

    ``known_sections``: the other sections this command reads, whose ``--set`` items are skipped here; an
    item for any other section is an error. Raises :class:`ConfigError` naming the file, flag and field."""
    fields: dict[str, Any] = {section: (model, Field(default_factory=model))}  # one field, named like the section
    settings_cls = create_model(f"{model.__name__}Settings", __base__=_Sections, **fields)
    file_section: dict[str, Any] = {}
    if config is not None:
        if not config.is_file():
            raise ConfigError(f"--config {config}: no such file")
        try:
            raw = JsonConfigSettingsSource(settings_cls, json_file=config)()
        except (OSError, ValueError) as e:
            raise ConfigError(f"--config {config}: {e}") from None
        try:
            # validated on its own first (errors name the file), then keyed like the CLI source (by alias)
            file_section = model.model_validate(raw.get(section, {})).model_dump(by_alias=True, exclude_unset=True)
        except ValidationError as e:
            raise _errors(e, f"--config {config}", section) from None
    try:
        cli: CliSettingsSource[Any] = CliSettingsSource(
            settings_cls, cli_parse_args=_section_args(sets, section, known_sections, model), cli_exit_on_error=False
        )
        init: dict[str, Any] = {section: file_section, "_cli_settings_source": cli}
        loaded = settings_cls(**init)
    except SettingsError as e:
        raise ConfigError(f"--set: {e}") from None
    except ValidationError as e:
        raise _errors(e, "--set") from None
    value: _M = getattr(loaded, section)
    return value


def fields_help(*models: type[BaseModel]) -> str:
    """One line per spec field (``--help-spec``): ``EngineSpec.max_sessions (default 64): ...``."""
    lines = []
    for m in models:
        for name, f in m.model_fields.items():
            lines.append(
                f"{m.__name__}.{name} (default {f.get_default(call_default_factory=True)!r}): {f.description or ''}"
            )
    return "\n".join(lines)
