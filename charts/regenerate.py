"""Regenerate the chart's parts that are generated from the typed DuplexModel spec:

- ``duplex/crds/duplexmodels.duplex.ai.yaml``: exactly ``duplex crd``;
- ``exampleModel.spec`` in ``duplex/values.schema.json``: exactly ``duplex crd --values-schema``.

Run ``.venv/bin/python charts/regenerate.py`` after changing the spec; tests/charts fail on drift.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from duplex.operator.crd import crd_manifest
from duplex.operator.schema import values_json_schema
from duplex.operator.spec import DuplexModelSpec

CHART = Path(__file__).resolve().parent / "duplex"
CRD_FILE = CHART / "crds" / "duplexmodels.duplex.ai.yaml"
VALUES_SCHEMA = CHART / "values.schema.json"


def crd_yaml() -> str:
    """What ``duplex crd`` prints."""
    return yaml.safe_dump_all([crd_manifest()], sort_keys=False)


def spec_schema() -> dict[str, Any]:
    """``duplex crd --values-schema`` without its ``$schema`` line (it is nested in the chart's schema)."""
    schema: dict[str, Any] = values_json_schema(DuplexModelSpec)
    schema.pop("$schema", None)
    return schema


def main() -> None:
    CRD_FILE.write_text(crd_yaml())
    values = json.loads(VALUES_SCHEMA.read_text())
    values["properties"]["exampleModel"]["properties"]["spec"] = spec_schema()
    VALUES_SCHEMA.write_text(json.dumps(values, indent=2) + "\n")
    print(f"wrote {CRD_FILE} and {VALUES_SCHEMA}")


if __name__ == "__main__":
    main()
