"""Query-string overrides of a source spec (``sim?hr=110``, ``serial:PORT?fs=250``) applied to
a config section and validated by its pydantic model, each bad parameter named in the error."""

from __future__ import annotations

from typing import TypeVar
from urllib.parse import parse_qsl

from pydantic import BaseModel, ValidationError

from ecgmon.monitor.sources.base import SourceError

Section = TypeVar("Section", bound=BaseModel)


def apply_query(spec: str, query: str, base: Section, params: dict[str, str], what: str) -> Section:
    """``base`` with the ``key=value`` pairs of ``query`` applied; ``params`` maps each accepted
    key to its field. ``what`` names the source kind in errors ("serial", "simulator")."""
    if not query:
        return base
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise SourceError(f"'{spec}': malformed parameters, expected key=value pairs joined by &") from None
    overrides: dict[str, str] = {}
    key_of: dict[str, str] = {}
    for key, value in pairs:
        if key not in params:
            raise SourceError(f"'{spec}': unknown {what} parameter '{key}' (known: {', '.join(params)})")
        field = params[key]
        if field in overrides:
            raise SourceError(f"'{spec}': {what} parameter '{key}' given twice")
        if value == "":
            raise SourceError(f"'{spec}': {what} parameter '{key}' has no value")
        overrides[field] = value
        key_of[field] = key
    try:
        return type(base).model_validate({**base.model_dump(), **overrides})
    except ValidationError as err:
        first = err.errors()[0]
        msg = first["msg"].removeprefix("Value error, ")
        if not first["loc"]:  # a rule between fields (lead2 and channel): no one parameter to name
            raise SourceError(f"'{spec}': bad {what} parameters: {msg}") from None
        field = str(first["loc"][0])
        raise SourceError(f"'{spec}': bad value for {what} parameter '{key_of.get(field, field)}': {msg}") from None
