"""The upstream ``moshi`` package, imported on first use: its loaders, its built-in Moshi 7B LM arguments, and
eager (uncompiled) execution of its modules."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..config import ModelError


def upstream_loaders() -> Any:
    """``moshi.models.loaders``, or ``ModelError`` saying how to install the upstream package."""
    try:
        from moshi.models import loaders
    except ImportError as e:  # pragma: no cover - the [moshi] extra is part of the dev setup
        raise ModelError(
            "the Moshi family needs the upstream moshi package: pip install --no-deps moshi==0.2.13 "
            f"(and its imports: pip install 'duplex[moshi]') ({e})"
        ) from None
    return loaders


def upstream_lm_kwargs() -> dict[str, Any]:
    """A copy of upstream's built-in LM arguments (the published Moshi 7B shape)."""
    return copy.deepcopy(dict(upstream_loaders()._lm_kwargs))


@contextmanager
def no_compile() -> Iterator[None]:
    """Run upstream modules eagerly (its lazy torch.compile wants a C toolchain on CPU)."""
    from moshi.utils.compile import no_compile as upstream_no_compile

    with upstream_no_compile():
        yield
