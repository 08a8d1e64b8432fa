"""The dataset spec shared by every command: where a dataset is, how to read it, how to sample it.

On the command line a dataset is `NAME=PATH[,key=value...]` (or a bare PATH where one dataset is meant); in
YAML it is `NAME: {path: PATH, key: value, ...}`. Keys that are not the spec's own fields are reader options
(split, classes, level, energy_key, ...), written inline or under `options:`; the reader rejects the ones it
does not know. Values are YAML scalars (atomsift.settings.parse_value).

    name, spec = parse_dataset_arg("t1x=/data/transition1x.h5,split=train,n_samples=500")
    ds = open_spec(spec)
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from atomsift.data.base import Dataset
from atomsift.errors import ConfigError, DataError, did_you_mean
from atomsift.settings import parse_value, validate


class DatasetSpec(BaseModel):
    """One dataset: path (file, folder, glob or bundled:NAME), format, reader options, sampling."""

    model_config = ConfigDict(extra="forbid")

    path: str
    format: str | None = None
    options: dict[str, Any] = Field(default_factory=dict, description="reader options, e.g. split, classes, level")
    sampling: Literal["balanced", "random"] | None = Field(
        None, description="balanced (per class) or random; each command documents its default"
    )
    n_samples: int | None = Field(None, ge=1, description="structures to draw (default: the command's n_samples)")

    @model_validator(mode="before")
    @classmethod
    def _inline_reader_options(cls, data: Any) -> Any:
        """Keys that are not fields of the spec are reader options: {path, split: train} == {path, options: {split}}.
        A string is the path, with inline options as on the command line: 'PATH[,key=value...]'."""
        if isinstance(data, str):
            try:
                data = cls.text_mapping(data)
            except ConfigError as exc:
                raise ValueError(exc.problem) from None
        if not isinstance(data, dict):
            return data
        extra, options = cls._split_options(data)
        if not extra or not isinstance(options, dict):
            return data  # a non-mapping `options` is reported by validation
        clash = sorted(set(extra) & set(options))
        if clash:
            raise ValueError(f"reader option(s) {', '.join(clash)} given both inline and under 'options'")
        return {**{k: v for k, v in data.items() if k in cls.model_fields}, "options": {**options, **extra}}

    @classmethod
    def text_mapping(cls, text: str) -> dict[str, Any]:
        """The mapping a spec written as text stands for: 'PATH[,key=value...]' -> {path, key: value, ...}."""
        return spec_mapping(text)

    @classmethod
    def _split_options(cls, data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        extra = {k: v for k, v in data.items() if k not in cls.model_fields}
        options = data.get("options") or {}
        return extra, dict(options) if isinstance(options, dict) else options

    @classmethod
    def normalize(cls, data: Any) -> Any:
        """A spec mapping with its inline reader options moved under `options` (as is where that clashes)."""
        if not isinstance(data, dict):
            return data
        extra, options = cls._split_options(data)
        if not extra or not isinstance(options, dict) or set(extra) & set(options):
            return data
        return {**{k: v for k, v in data.items() if k in cls.model_fields}, "options": {**options, **extra}}

    def reader_kwargs(self) -> dict[str, Any]:
        return {"format": self.format, **self.options}


def parse_dataset_arg(
    text: str, spec_cls: type[DatasetSpec] = DatasetSpec, *, default_name: str | None = None
) -> tuple[str, DatasetSpec]:
    """'NAME=PATH[,key=value...]' -> (name, spec). With `default_name`, a bare 'PATH[,key=value...]' is allowed.

    A comma that is not followed by key=value belongs to the path. Values are parsed with `parse_value`.
    """
    head, *rest = text.split(",")
    name, sep, path = head.partition("=")
    if not sep or "/" in name or not name or not path:
        if default_name is None or not head or ("=" in head and not path):
            raise ConfigError(
                f"dataset argument '{text}' is not NAME=PATH[,key=value...]",
                fix="write it like ani1x=/data/ani1x.h5 or t1x=/data/transition1x.h5,split=train",
            )
        name, path = default_name, head
    spec = validate(spec_cls, spec_mapping(",".join([path, *rest]), text), example="docs/cli.md")
    return name.strip(), spec


def spec_mapping(text: str, shown: str | None = None) -> dict[str, Any]:
    """'PATH[,key=value...]' -> {'path': PATH, key: value, ...} (a comma not followed by key=value belongs to
    the path; values parsed with `parse_value`). `shown`: the text errors quote (default `text`)."""
    head, *rest = text.split(",")
    path_parts = [head]
    values: dict[str, Any] = {}
    for part in rest:
        key, eq, value = part.partition("=")
        if not eq:
            if values:
                raise ConfigError(
                    f"dataset argument '{shown or text}': '{part}' after the options is not key=value",
                    fix="put options after the path: NAME=PATH,key=value,key=value",
                )
            path_parts.append(part)  # a comma inside the path
            continue
        values[key.strip()] = parse_value(value.strip())
    return {"path": ",".join(path_parts), **values}


def open_spec(
    spec: DatasetSpec, name: str | None = None, *, role: str = "dataset", own: tuple[str, ...] | None = None
) -> Dataset:
    """Open the dataset a spec names (``role`` 'name' in errors, e.g. "upstream 'acac'").

    An unknown reader option gets the nearest accepted name, among the format's options and the spec's own
    keys (``own``: those the command takes; default all of the spec's fields).
    """
    from atomsift.data import open_dataset
    from atomsift.data.registry import UnknownReaderOptions

    try:
        return open_dataset(spec.path, **spec.reader_kwargs())
    except UnknownReaderOptions as exc:
        keys = list(own) if own is not None else [k for k in type(spec).model_fields if k != "options"]
        where = f"{role} '{name}': " if name else ""
        raise ConfigError(
            where + exc.problem,
            file=exc.file,
            fix=did_you_mean(exc.unknown, exc.accepted + keys)
            + f"{exc.fix}; keys of a dataset entry itself: {', '.join(keys)}",
        ) from None
    except DataError as exc:  # a missing or damaged file: which entry of the settings names it
        if name and role != "dataset" and not exc.problem.startswith(f"{role} '{name}'"):
            exc.problem = f"{role} '{name}': {exc.problem}"
            exc.args = (exc.message(),)
        raise
