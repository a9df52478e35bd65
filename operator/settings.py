"""Settings of ``duplex operator`` from the environment (pydantic-settings), read when the operator starts."""

from __future__ import annotations

from pydantic import AliasChoices, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict


class OperatorSettings(BaseSettings):
    """``DUPLEX_OPERATOR_*`` variables (and ``DUPLEX_KUBECONFIG``)."""

    model_config = SettingsConfigDict(env_prefix="DUPLEX_OPERATOR_", extra="ignore", use_attribute_docstrings=True)

    resync_seconds: float = Field(120.0, gt=0)
    """``DUPLEX_OPERATOR_RESYNC_SECONDS``: every model is fully reconciled this often even without events (a
    safety net for missed watches)."""
    workers: int = Field(16, ge=1)
    """``DUPLEX_OPERATOR_WORKERS``: threads running the (blocking) reconciles."""
    kubeconfig: str | None = Field(None, validation_alias=AliasChoices("DUPLEX_KUBECONFIG"))
    """``DUPLEX_KUBECONFIG``: kubeconfig file; unset = in-cluster config, else ``$KUBECONFIG`` / ``~/.kube/config``."""


def load_operator_settings() -> OperatorSettings:
    """The settings, or a ``ValueError`` naming the variable that is wrong."""
    try:
        return OperatorSettings()
    except ValidationError as e:
        raise ValueError("; ".join(f"{_variable(err['loc'])}: {err['msg']}" for err in e.errors())) from None


def _variable(loc: tuple[int | str, ...]) -> str:
    name = str(loc[0]).upper() if loc else "?"
    return name if name.startswith("DUPLEX_") else f"DUPLEX_OPERATOR_{name}"
