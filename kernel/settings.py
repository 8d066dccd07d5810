"""Settings as msgspec Structs decoded from ``LIVORA_*`` environment variables."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec

from kernel.errors import ConfigError

S = TypeVar("S", bound=msgspec.Struct)

PREFIX = "LIVORA_"
_PATH = re.compile(r"\s*-\s*at `\$\.([a-z0-9_]+)`")


def variable_name(field: str) -> str:
    return f"{PREFIX}{field.upper()}"


def load_settings(cls: type[S], environ: Mapping[str, str] | None = None, **overrides: Any) -> S:
    """Build ``cls`` from ``LIVORA_<FIELD>`` variables; explicit ``overrides`` win.

    A value of the wrong type or outside its allowed set raises ``ConfigError`` naming the
    variable, e.g. ``LIVORA_PORT: Expected `int`, got `str```.
    """
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    for field in msgspec.structs.fields(cls):
        value = environ.get(variable_name(field.name))
        if value is not None:
            raw[field.name] = value
    raw.update(overrides)
    try:
        return msgspec.convert(raw, cls, strict=False)
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = _PATH.search(message)
        field = match.group(1) if match else "?"
        raise ConfigError(variable_name(field), _PATH.sub("", message)) from None
