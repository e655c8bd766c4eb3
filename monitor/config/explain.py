"""Pydantic validation errors rewritten as plain-word problems at the right YAML line."""

from __future__ import annotations

import difflib
from typing import TypeVar, get_args

from pydantic import BaseModel, RootModel, ValidationError
from pydantic_core import ErrorDetails

from monitor.config.schema import CHANNEL_TYPES, type_tags
from monitor.config.yamlsource import KeyPath, Reporter, kind

M = TypeVar("M", bound=BaseModel)

_PLAIN = {
    **dict.fromkeys(("model_type", "model_attributes_type", "dict_type"), "expected a mapping"),
    **dict.fromkeys(("list_type", "tuple_type"), "expected a list"),
    "string_type": "expected a string",
    **dict.fromkeys(("int_type", "int_parsing", "int_from_float"), "expected a whole number"),
    **dict.fromkeys(("float_type", "float_parsing"), "expected a number"),
    **dict.fromkeys(("bool_type", "bool_parsing"), "expected true or false"),
}
_BOUNDS = {"greater_than_equal": ("ge", "at least"), "less_than_equal": ("le", "at most")}
_BOUNDS |= {"greater_than": ("gt", "more than"), "less_than": ("lt", "less than")}


def validate(model: type[M], data: object, prefix: KeyPath, report: Reporter) -> M | None:
    """`data` as `model`; on errors, reports each at `prefix` + its path and returns a stand-in
    built from the valid keys, or None."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
    found = [_explain(e, model, data) for e in errors]
    suggested = {(path[:-1], hint) for path, _, hint in found if hint}
    for path, message, _ in found:
        if message.startswith("missing required key") and (path[:-1], path[-1]) in suggested:
            continue  # the misspelt key already reported says what was meant
        report.add((*prefix, *path), message)
    # Without its broken keys the entry can still be cross-checked, so more is reported at once;
    # a config with problems is never returned, so the stand-in values do no harm.
    broken = {e["loc"][0] for e in errors if e["loc"]}
    if isinstance(data, dict) and broken & data.keys():
        try:
            return model.model_validate({k: v for k, v in data.items() if k not in broken})
        except ValidationError:
            pass
    return None


def _explain(error: ErrorDetails, model: type[BaseModel], data: object) -> tuple[KeyPath, str, str]:
    """(shown path, message, key suggested by an unknown-key message or "")."""
    loc = tuple(error["loc"])
    path = _shown(loc, data)
    kind_, ctx = error["type"], error.get("ctx", {})
    key = str(path[-1]) if path else ""
    if kind_ == "extra_forbidden":
        close = difflib.get_close_matches(key, _keys_at(model, loc[:-1]), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return path, f"unknown key '{key}'{hint}", close[0] if close else ""
    if kind_ == "missing":
        return path, f"missing required key '{key}'", ""
    if kind_ in ("union_tag_invalid", "union_tag_not_found"):
        tag, known = ctx["discriminator"].strip("'"), ", ".join(CHANNEL_TYPES)
        got = f"unknown {tag} '{ctx['tag']}'" if "tag" in ctx else f"missing required key '{tag}'"
        return (*path, tag), f"{got} (known: {known})", ""
    if kind_ == "value_error":
        return path, str(ctx["error"]), ""
    if kind_ in _PLAIN:
        # YAML 1.1 reads a bare yes/no/on/off as a boolean.
        quote = kind_ == "string_type" and isinstance(error["input"], bool)
        hint = " (put it in quotes if you meant text)" if quote else ""
        return path, f"{_PLAIN[kind_]}, got {kind(error['input'])}{hint}", ""
    if kind_ in _BOUNDS:
        name, words = _BOUNDS[kind_]
        return path, f"must be {words} {ctx[name]}", ""
    if kind_ in ("string_too_short", "too_short"):
        return path, "must not be empty", ""
    if kind_ == "literal_error":
        return path, f"must be {ctx['expected']}", ""
    return path, error["msg"], ""


def _shown(loc: KeyPath, data: object) -> KeyPath:
    """The error location as the user wrote it: union tags and other pydantic-only steps go."""
    out: list[str | int] = []
    for index, part in enumerate(loc):
        in_list = isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)
        if (isinstance(data, dict) and part in data) or in_list:
            data = data[part]  # type: ignore[index]
        elif not (index == len(loc) - 1 and isinstance(data, dict)):
            continue
        out.append(part)
    return tuple(out)


def _keys_at(model: type[BaseModel], loc: KeyPath) -> list[str]:
    """The keys the model accepts at `loc`, for "did you mean" hints."""
    models = _models(model)
    for part in loc:
        inner = [
            sub
            for m in models
            for name, info in m.model_fields.items()
            if (info.alias or name) == part
            for sub in _models(info.annotation)
        ]
        tagged = [m for m in models if "type" in m.model_fields and part in type_tags(m)]
        models = inner or tagged or models
    return sorted({info.alias or name for m in models for name, info in m.model_fields.items()})


def _models(annotation: object) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, RootModel):
        return _models(annotation.model_fields["root"].annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models(arg)]
