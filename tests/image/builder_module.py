"""``scripts/image.py`` loaded as a module (``scripts/`` is not a package), for the image tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def image_builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("image_builder", ROOT / "scripts" / "image.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve field types through the module's entry
    spec.loader.exec_module(module)
    return module
