"""Error messages: pydantic's validation error as one line, and user values cut short for any message.

``format_validation_error`` names the dotted key, the value given and what is
allowed there, read from the schema that ``Config`` declares.
"""

from __future__ import annotations

import reprlib
import typing
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ValidationError


def format_validation_error(error: ValidationError) -> str:
    """Turns pydantic's error into one line: dotted key, value, what is allowed."""
    errors = error.errors(include_url=False)
    first = errors[0]
    loc = _clean_loc(first["loc"])
    dotted = _dotted(loc)
    kind = first["type"]
    value = first.get("input")
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        message = f"unknown key '{dotted}'" + (f"; allowed keys here: {', '.join(allowed)}" if allowed else "")
    elif kind == "missing":
        message = f"{dotted}: required key is missing"
    else:
        text = first["msg"].replace("a valid tuple", "a list")
        if text.startswith("Value error, "):
            text = text[len("Value error, ") :]
        message = f"{dotted}: {text}" if dotted else text
        if kind not in ("value_error", "assertion_error") or not isinstance(value, (dict, list)):
            if dotted:
                message += f" (got {_short(value)})"
        if kind in ("finite_number", "int_parsing_size"):  # .inf, .nan, 1e300: say what the key takes
            allowed = _allowed_range(loc)
            message += f"; allowed: {allowed}" if allowed else ""
    if len(message) > 500:  # a validator's message can quote a long user value
        message = message[:497] + "..."
    if len(errors) > 1:
        message += f" [and {len(errors) - 1} more error(s)]"
    return message


def _clean_loc(loc: tuple) -> tuple:
    # Tagged unions add the tag to the location: ('stages', 0, 'prune', 'prune', ...).
    cleaned: list = []
    for part in loc:
        if cleaned and part == cleaned[-1] and isinstance(part, str):
            continue
        cleaned.append(part)
    return tuple(cleaned)


def _dotted(loc: tuple) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            # Keys come from the user's file: escape newlines and control characters.
            text += ("." if text else "") + _short_text(str(part), 60).encode("unicode_escape").decode("ascii")
    return text


def _allowed_keys(loc: tuple) -> list[str]:
    node = _unwrap(_declared(loc)[0])
    if isinstance(node, type) and issubclass(node, BaseModel):
        return list(node.model_fields)
    return []


def _declared(loc: tuple) -> tuple[Any, list]:
    """What the schema declares at ``loc``: (annotation, constraint metadata); (None, []) where nothing is."""
    from edgecomp.config.run import Config   # here: run.py imports this module for Config's own errors

    node: Any = Config
    metadata: list = []
    for part in loc:
        node = _unwrap(node)
        if isinstance(part, int):
            args = typing.get_args(node)
            node = args[0] if args else None
            metadata = []
            continue
        if isinstance(node, type) and issubclass(node, BaseModel) and part in node.model_fields:
            owner = node
        else:
            match = [m for m in _union_members(node) if part in m.model_fields]
            if not match:
                return None, []
            owner = match[0]
        node = owner.model_fields[part].annotation
        metadata = list(owner.model_fields[part].metadata)
    inner = node
    while typing.get_origin(inner) is Union and type(None) in typing.get_args(inner):
        inner = next(a for a in typing.get_args(inner) if a is not type(None))   # Optional[X] -> X
    for item in (typing.get_args(inner)[1:] if typing.get_origin(inner) is Annotated else ()):
        metadata.extend(getattr(item, "metadata", [item]))   # Annotated[int, Field(ge=1)]: Field's bounds
    return node, metadata


def _allowed_range(loc: tuple) -> str:
    """The bounds declared for the number at ``loc``, e.g. "a finite number > 0 and <= 86400"; "" if none."""
    annotation, metadata = _declared(loc)
    if typing.get_origin(_unwrap(annotation)) is Literal:
        return "one of " + ", ".join(str(value) for value in typing.get_args(_unwrap(annotation)))
    symbols = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    bounds = []
    for item in metadata:
        for name, symbol in symbols.items():
            bound = getattr(item, name, None)
            if bound is not None:
                bounds.append(f"{symbol} {bound:g}" if isinstance(bound, float) else f"{symbol} {bound}")
    if not bounds:
        return ""
    kind = "an integer" if _unwrap(annotation) is int else "a finite number"
    return f"{kind} " + " and ".join(bounds)


def _unwrap(node: Any) -> Any:
    while True:
        origin = typing.get_origin(node)
        if origin is Annotated:
            node = typing.get_args(node)[0]
        elif origin is Union:
            args = [a for a in typing.get_args(node) if a is not type(None)]
            if len(args) == 1:
                node = args[0]
            else:
                return node
        else:
            return node


def _union_members(node: Any) -> list:
    if typing.get_origin(node) is not Union:
        return []
    return [m for m in (_unwrap(a) for a in typing.get_args(node)) if isinstance(m, type) and issubclass(m, BaseModel)]


_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlong = 40
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = _REPR.maxfrozenset = _REPR.maxdeque = 6


def _short(value: Any) -> str:
    """A user value for an error message: at most 80 characters, and never the whole value rendered first.

    ``reprlib`` looks at no more than 6 items on each of 3 levels, and cuts long
    strings before quoting them, so an alias bomb, a huge list or a 1 MiB string
    cost microseconds here.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"<an integer of about {int(value.bit_length() * 0.30103) + 1} digits>"
    try:
        text = _REPR.repr(value)
    except Exception:  # noqa: BLE001 - a value whose repr fails: name its type
        text = f"<{type(value).__name__}>"
    return _short_text(text, 80)


def _short_text(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(value: Any) -> str:
    return {list: "list", dict: "map", str: "string"}.get(type(value), type(value).__name__)
