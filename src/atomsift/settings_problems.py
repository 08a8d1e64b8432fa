"""Settings errors in the user's terms: pydantic's validation errors turned into the problems `settings.validate`
reports (union tags dropped, true/false refused for numbers, missing keys with their descriptions, unknown
keys with the nearest name, and what the user typed on the command line)."""

from __future__ import annotations

import contextlib
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from atomsift.errors import ConfigError, nearest


def bools_as_numbers(annotation: Any, value: Any, loc: tuple = ()) -> list[tuple]:
    """Locations where a true/false value sits in a field that takes only numbers (and string literals)."""
    annotation = _unannotated(annotation)
    if isinstance(value, bool):
        alts = [_unannotated(a) for a in _model_args(annotation)]
        numbers = [a for a in alts if a in (int, float)]
        literals = [a for a in alts if get_origin(a) is Literal and not any(isinstance(v, bool) for v in get_args(a))]
        return [loc] if numbers and len(numbers) + len(literals) == len(alts) else []
    for ann in map(_unannotated, _model_args(annotation)):
        origin, args = get_origin(ann), get_args(ann)
        as_text = getattr(ann, "text_mapping", None)  # a model also written as text (a dataset spec)
        if isinstance(value, str) and isinstance(ann, type) and issubclass(ann, BaseModel) and as_text is not None:
            with contextlib.suppress(ConfigError):
                value = as_text(value)
        if isinstance(ann, type) and issubclass(ann, BaseModel) and isinstance(value, dict):
            fields = {f.alias or n: f for n, f in ann.model_fields.items()}
            return [
                b for k, v in value.items() if k in fields for b in bools_as_numbers(fields[k].annotation, v, (*loc, k))
            ]
        if origin is dict and len(args) == 2 and isinstance(value, dict):
            return [b for k, v in value.items() for b in bools_as_numbers(args[1], v, (*loc, k))]
        if origin in (list, tuple) and args and isinstance(value, (list, tuple)):
            each = [args[0]] * len(value) if origin is list or args[-1] is Ellipsis else list(args)
            return [b for i, (a, v) in enumerate(zip(each, value)) for b in bools_as_numbers(a, v, (*loc, i))]
    return []


def _unannotated(annotation: Any) -> Any:
    """int for Annotated[int, Field(...)]; anything else as it is."""
    return get_args(annotation)[0] if get_origin(annotation) is Annotated else annotation


def merged_alternatives(model: Any, errors: list[dict[str, Any]], data: Any) -> list[dict[str, Any]]:
    """Errors without pydantic's union tags: a value that fits no member of a union is reported once per member
    under a tag inserted in its location ('split.train.int', 'split.train.float', 'fit_scales.DatasetSpec.path');
    the tags are dropped, a scalar union's alternatives become one error (`alternatives`), and where the value
    is a mapping the scalar members' complaints ('a valid string') give way to the structured member's."""
    out: list[dict[str, Any]] = []
    for err in errors:
        loc: list[Any] = []
        node, union_at, nested = data, None, False
        for part in err["loc"]:
            key = isinstance(part, int) or (isinstance(node, dict) and part in node)
            if not key and str(part) not in _known_keys(model, tuple(loc)) and err["type"] != "extra_forbidden":
                union_at = tuple(loc)  # a union member's tag: not a key of the data or of the settings
                continue
            nested = nested or union_at is not None
            loc.append(part)
            node = node.get(part) if isinstance(node, dict) else None
        out.append({**err, "loc": tuple(loc), "union_at": union_at, "nested": nested})
    structured = {e["union_at"] for e in out if e["nested"]}
    merged: list[dict[str, Any]] = []
    for err in out:
        scalar_member = err["union_at"] is not None and not err["nested"]
        if scalar_member and err["union_at"] in structured and isinstance(_value_at(data, err["loc"]), dict):
            continue
        if scalar_member and merged and merged[-1]["loc"] == err["loc"] and merged[-1].get("alternatives"):
            merged[-1]["alternatives"].append(err)
        else:
            merged.append({**err, "alternatives": [err]} if scalar_member else err)
    return merged


def _value_at(data: Any, loc: tuple) -> Any:
    """The raw value at `loc` of the settings data (None where the path does not lead to one)."""
    for part in loc:
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        else:
            return None
    return data


def problem_text(model: type[BaseModel], err: dict[str, Any]) -> str:
    """pydantic's message for one error, without its "Value error, " prefix; unknown keys get a suggestion, a
    missing key its description, and a value that fits none of a union's members one line for all of them."""
    loc = tuple(err["loc"])
    if err["type"] == "extra_forbidden":
        near = nearest(str(loc[-1]), sorted(_known_keys(model, loc[:-1])))
        return "unknown key" + (f"; did you mean '{near}'?" if near else "")
    alternatives = err.get("alternatives") or [err]
    if len(alternatives) > 1:
        wants = [str(e["msg"]).removeprefix("Input should be ").split(",")[0] for e in alternatives]
        return "expected " + " or ".join(dict.fromkeys(wants))
    if err["type"] == "missing":
        field = _field_at(model, loc)
        said = field.description if field is not None and field.description else None
        return "required" + (f": {said}" if said else "")
    if err["type"] in ("model_type", "model_attributes_type", "dict_type"):
        keys = sorted(_known_keys(model, loc))
        if keys:
            return f"expected a mapping of {', '.join(keys)} (key: value), got {err.get('input')!r}"
    if err["type"] == "list_type" and not isinstance(err.get("input"), (list, tuple, dict)):
        return f"expected a list, e.g. [{err.get('input')}]"
    msg = str(err["msg"])
    return msg.removeprefix("Value error, ")


def _field_at(model: Any, loc: tuple) -> Any:
    """The FieldInfo of the settings key at ``loc`` (None where it is not a model field)."""
    for ann in _model_args(model) if loc else []:
        ann = _unannotated(ann)
        if isinstance(ann, type) and issubclass(ann, BaseModel) and str(loc[0]) in ann.model_fields:
            field = ann.model_fields[str(loc[0])]
            return field if len(loc) == 1 else _field_at(field.annotation, loc[1:])
        if get_origin(ann) is dict and len(get_args(ann)) == 2:
            return _field_at(get_args(ann)[1], loc[1:]) if len(loc) > 1 else None
        if get_origin(ann) is list and get_args(ann):
            return _field_at(get_args(ann)[0], loc[1:]) if len(loc) > 1 else None
    return None


def _known_keys(model: Any, loc: tuple) -> set[str]:
    """Field names (and aliases) of the settings model found at ``loc`` inside ``model`` ({} if not a model)."""
    candidates = [model]
    for part in loc:
        nxt = []
        for node in candidates:
            for ann in _model_args(node):
                if isinstance(ann, type) and issubclass(ann, BaseModel):
                    field = ann.model_fields.get(str(part))
                    if field is not None:
                        nxt.append(field.annotation)
                elif get_origin(ann) in (dict, list, tuple) and get_args(ann):
                    nxt.append(get_args(ann)[-1] if get_origin(ann) is dict else get_args(ann)[0])
        candidates = nxt
    names: set[str] = set()
    for node in candidates:
        for ann in _model_args(node):
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                for name, field in ann.model_fields.items():
                    names.add(field.alias or name)
    return names


def _model_args(annotation: Any) -> list[Any]:
    """The alternatives of a Union / Optional annotation (the annotation itself otherwise)."""
    args = get_args(annotation)
    return [a for a in args if a is not type(None)] if get_origin(annotation) in (Union, UnionType) else [annotation]


def typed_for(loc: tuple, given: dict[str, str]) -> str | None:
    """What the user typed on the command line that set the key at ``loc``, a key above it or one inside it."""
    key = ".".join(map(str, loc))
    parts = key.split(".") if key else []
    for n in range(len(parts), 0, -1):
        typed = given.get(".".join(parts[:n]))
        if typed is not None:
            return typed
    inside = [typed for k, typed in given.items() if key and k.startswith(key + ".")]
    return ", ".join(inside) if inside else None
