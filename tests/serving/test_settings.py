"""``--set SECTION.FIELD=VALUE``: every field a spec has is settable by the name users write (snake_case),
whether or not the spec renames its fields for the CRD (camelCase aliases)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import BaseModel

from duplex.serving.cli import CONFIG_SECTIONS
from duplex.serving.settings import ConfigError, load_section

_SECTIONS = [(section, model) for sections in CONFIG_SECTIONS.values() for section, model in sections.items()]


def _underscore_fields() -> list[tuple[str, type[BaseModel], str, object]]:
    """(section, model, field, a valid value) for each field named with an underscore that has a plain default."""
    out = []
    for section, model in _SECTIONS:
        for name, info in model.model_fields.items():
            default = info.get_default(call_default_factory=True)
            if "_" in name and default is not None and not isinstance(default, BaseModel):
                out.append((section, model, name, default))
    return out


def test_set_takes_underscored_fields_of_an_unaliased_spec(tmp_path: Path) -> None:
    """``model.top_k`` / ``model.cfg_coef``: ModelSource has no aliases; --set agrees with the JSON file."""
    from duplex.model.spec import ModelSource

    by_set = load_section(None, ["model.top_k=5", "model.cfg_coef=3"], "model", ModelSource, ["engine"])
    cfg = tmp_path / "engine.json"
    cfg.write_text(json.dumps({"model": {"top_k": 5, "cfg_coef": 3}}))
    by_file = load_section(cfg, [], "model", ModelSource, ["engine"])
    assert (by_set.top_k, by_set.cfg_coef) == (by_file.top_k, by_file.cfg_coef) == (5, 3.0)


@pytest.mark.parametrize(("section", "model", "field", "default"), _underscore_fields())
def test_every_underscored_field_is_settable(section: str, model: type[BaseModel], field: str, default: object) -> None:
    value = default if isinstance(default, str) else json.dumps(default)
    loaded = load_section(None, [f"{section}.{field}={value}"], section, model, ["engine", "model"])
    assert getattr(loaded, field) == default


def test_camel_case_and_nested_names_still_work() -> None:
    from duplex.serving.spec import EngineSpec

    spec = load_section(None, ["engine.maxSessions=7", "engine.resources.cpu=3"], "engine", EngineSpec, ["model"])
    assert (spec.max_sessions, spec.resources.cpu) == (7, "3")


def test_unknown_field_is_named() -> None:
    from duplex.model.spec import ModelSource
    from duplex.serving.spec import EngineSpec

    with pytest.raises(ConfigError, match=r"unknown field model\.top_kk"):
        load_section(None, ["model.top_kk=5"], "model", ModelSource, ["engine"])
    with pytest.raises(ConfigError, match=r"unknown field engine\.resources\.cpus"):
        load_section(None, ["engine.resources.cpus=5"], "engine", EngineSpec, ["model"])
