"""The command vocabulary's shared parts: value parsing, YAML settings with `key=value` overrides, output rules.

Every command that has settings resolves them the same way (docs/cli.md):

    cfg = resolve_settings(PretrainConfig, config_file, flags={"seed": 3}, overrides=["lr=1e-4", "data.path=x.xyz"])

1. the YAML file given with `--config` (optional),
2. then the command's own flags that the user gave (None = not given),
3. then trailing `key=value` overrides, nested keys joined by dots,

validated by a pydantic model that rejects unknown keys. Values on the command line are YAML scalars
everywhere (`3` is an int, `1e-4` a float, `true` a bool, `[1, 2]` a list, `null` None, anything else text).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, Field, ValidationError

from atomsift.errors import ConfigError
from atomsift.settings_problems import bools_as_numbers, merged_alternatives, problem_text, typed_for

M = TypeVar("M", bound=BaseModel)

Seed = Annotated[int, Field(ge=0, le=2**32 - 1, description="random seed (0 to 2**32 - 1)")]
"""A seed numpy's generators take: negative or larger ones are refused with the settings, not mid-run."""


def parse_value(text: str) -> Any:
    """A command-line value as a YAML scalar or flow collection; text that is not valid YAML stays text.

    '3' -> 3, '1e-4' -> 0.0001, 'true' -> True, 'null' -> None, '[1, 2]' -> [1, 2], 'a.h5' -> 'a.h5'.
    """
    if text == "":
        return ""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and not text.lstrip().startswith(("'", '"')) and _looks_like_float(value):
        return float(value)  # YAML 1.1 reads '1e-4' (no dot) as text; people mean a number
    if isinstance(value, dict | list | str | int | float | bool) or value is None:
        return value
    return text  # dates and other YAML types: keep what the user typed


def _looks_like_float(text: str) -> bool:
    try:
        value = float(text)
    except ValueError:
        return False
    return math.isfinite(value) and any(c in text for c in "eE.") and not text.strip().startswith(("0x", "."))


def parse_key_values(pairs: list[str] | None, what: str = "option") -> dict[str, Any]:
    """['a=1', 'b=x'] -> {'a': 1, 'b': 'x'} with `parse_value`; ConfigError for an item without '='."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{what} '{pair}' is not KEY=VALUE", fix="write it like key=value, e.g. seed=3")
        out[key.strip()] = parse_value(value.strip())
    return out


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """data['a']['b'] = value for key 'a.b', creating intermediate mappings; ConfigError over a non-mapping."""
    parts = key.split(".")
    if any(not p for p in parts):
        raise ConfigError(f"override key '{key}' has an empty part", fix="join nested keys with single dots: a.b.c")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise ConfigError(
                f"override '{key}' goes inside '{where}', which holds {type(child).__name__} {child!r}, not settings",
                fix=f"override '{where}' itself, or check the key against the config",
            )
        node = child
    node[parts[-1]] = value


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses a key given twice in one mapping (it kept the last one without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:  # the keys as written (a merge key `<<` and its entries are YAML's own)
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            if key_node.value in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key_node.value}'", key_node.start_mark
                )
            seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | Path | None, example: str = "configs/") -> dict[str, Any]:
    """The mapping in a YAML file ({} for None); ConfigError naming the file for missing, unreadable or bad YAML."""
    if path is None:
        return {}
    path = Path(path)
    if path.is_dir():
        raise ConfigError("--config names a folder, not a YAML file", file=path, fix="give the path of a .yaml file")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # a SafeLoader: no Python objects
    except OSError as exc:
        raise ConfigError(f"cannot read the config file ({exc.strerror})", file=path, fix="check the path") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or ""
        duplicate = problem.startswith("duplicate key")
        raise ConfigError(
            f"the config file is not valid YAML{where}" + (f": {problem}" if duplicate else ""),
            file=path,
            fix="keep one of the two entries" if duplicate else "fix the YAML syntax",
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"the config file holds a {type(data).__name__}, not a mapping of settings",
            file=path,
            fix=f"write settings as 'key: value' lines (see {example})",
        )
    return data


def validate(
    model: type[M],
    data: dict[str, Any],
    *,
    source: str | Path | None = None,
    example: str = "",
    given: dict[str, str] | None = None,
    within: str | None = None,
) -> M:
    """`model.model_validate(data)`, with a ConfigError listing every bad or unknown key.

    An unknown key gets the nearest known name ("did you mean 'epochs'?"); ``given`` maps dotted keys set on
    the command line to what the user typed (e.g. {"epoch": "epoch=3"}), so that a problem is blamed on the
    command line rather than on ``source`` (the config file) when it came from there. ``within`` names a part
    of a larger config that is not a file of its own (e.g. "the pretrain section").
    """
    # pydantic reads true/false as 1/0 for a number (n_samples=true drew one structure): refused here
    errors = [{"loc": loc, "msg": "a number, not true/false", "type": "bool"} for loc in bools_as_numbers(model, data)]
    try:
        if not errors:
            return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
    if errors:
        problems, in_file = [], False
        for err in merged_alternatives(model, errors, data):
            loc = tuple(err["loc"])
            text = problem_text(model, err)
            typed = typed_for(loc, given or {})
            in_file = in_file or typed is None
            key = ".".join(map(str, loc))
            where = f" (command line: {typed})" if typed else ""
            problems.append((f"{key}{where}: " if key else "") + text)
        keyed = any(e["loc"] for e in errors)
        fix = "check each named key's spelling and value" if keyed else "give the settings the message asks for"
        raise ConfigError(
            f"invalid settings{f' in {within}' if within else ''} ({'; '.join(problems)})",
            file=source if in_file else None,
            fix=fix + (f"; the keys are in {example}" if example else ""),
        ) from None


def resolve_settings(
    model: type[M],
    config: str | Path | None = None,
    *,
    flags: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
    example: str = "",
    prepare: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> M:
    """Settings from `base` (e.g. a preset), the YAML `config`, the given `flags` and `key=value` overrides.

    Flags whose value is None were not given and do not count. Overrides are applied last, nested keys joined
    by dots; an override's value is parsed with `parse_value`. `prepare` may reshape the file's settings into
    the form the flags address (e.g. move inline reader options under `options`) before flags apply.
    """
    data: dict[str, Any] = deep_merge(dict(base or {}), load_yaml(config, example or "configs/"))
    if prepare is not None:
        data = prepare(data)
    for key, value in (flags or {}).items():
        if value is not None:
            set_dotted(data, key, value)
    for key, value in parse_key_values(overrides, "override").items():
        set_dotted(data, key, value)
    return validate(model, data, source=config, example=example, given=given_keys(flags, overrides))


def given_keys(flags: dict[str, Any] | None = None, overrides: list[str] | None = None) -> dict[str, str]:
    """Dotted keys set on the command line -> what the user typed there (``validate``'s ``given``)."""
    given = {key: _flag_text(value) for key, value in (flags or {}).items() if value is not None}
    typed = {pair.partition("=")[0].strip(): pair for pair in overrides or []}
    given.update({key: typed.get(key, key) for key in parse_key_values(overrides, "override")})
    return given


def _flag_text(value: Any) -> str:
    """How a flag's value is named in a problem: the value itself where it is short (`--seed -1` -> "-1")."""
    if isinstance(value, (bool, int, float, str)) and len(str(value)) <= 40:
        return f"an option or argument given {value}"
    return "an option or argument"


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` over `base`; mappings merge key by key, everything else is replaced."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def check_output_file(
    path: str | Path, overwrite: bool, *, what: str = "output file", reads: tuple[str | Path | None, ...] = ()
) -> Path:
    """Refuse to write a file over a folder, over a file the command reads (`reads`: its checkpoint, its data),
    or over an existing file without --overwrite; make its parent."""
    path = Path(path)
    for source in reads:
        if source is not None and path.exists() and Path(source).exists() and os.path.samefile(path, source):
            raise ConfigError(
                f"--out is the file this command reads ({what} over its input)",
                file=path,
                fix="choose another --out (--overwrite replaces outputs, never the input)",
            )
    if path.is_dir():
        raise ConfigError(
            f"--out names an existing folder, but this command writes a file ({what})",
            file=path,
            fix=f"give a file name, e.g. --out {path / 'out'}{_suffix_hint(what)}",
        )
    if path.exists() and not overwrite:
        raise ConfigError(
            f"the {what} exists", file=path, fix="pass --overwrite to replace it, or choose another --out"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _suffix_hint(what: str) -> str:
    for suffix in (".json", ".pt", ".aselmdb", ".yaml"):
        if suffix in what:
            return suffix
    return ""


def _umask() -> int:
    """The process umask, read from /proc where it can be (setting and restoring it races other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _mode_for(path: Path) -> int:
    """The mode a file written at `path` should get: the existing file's, else what open() would give."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return 0o666 & ~_umask()


@contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[str]:
    """A temporary file name beside ``path`` to write to; renamed over ``path`` when the block ends, removed
    if it raises, so an interruption never leaves a partial file. The file gets the mode open() would give
    it, or keeps the mode of the file it replaces (mkstemp makes 0600, which would hide checkpoints and caches
    from a group that shares them). Setting the mode is best effort: a filesystem that refuses chmod still gets
    the file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        with contextlib.suppress(OSError):
            os.chmod(tmp, _mode_for(path))
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a text file atomically (temporary file beside it + rename): an interruption leaves no partial file."""
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        fh.write(text)


@contextmanager
def removed_if_left_empty(path: str | Path) -> Iterator[None]:
    """On an error inside the block, remove ``path`` if the block created it and no file was written under it.

    Commands that must create their ``--out`` folder before all checks can run (CSI caches live in it) use this,
    so that bad input leaves nothing behind, while a run that wrote something keeps it for a resume.
    """
    path = Path(path)
    existed = path.exists()
    try:
        yield
    except BaseException:
        if not existed and path.is_dir() and not any(p.is_file() for p in path.rglob("*")):
            shutil.rmtree(path, ignore_errors=True)
        raise


def refuse_foreign_outputs(out: str | Path, marker: str, outputs: Sequence[str], *, what: str) -> None:
    """Refuse a folder that holds files this command writes (`outputs`: names or glob patterns) but not its own
    `marker` file (its settings or results): they are not this command's, and it would replace them. Callers skip
    this under --overwrite."""
    out = Path(out)
    if not out.is_dir() or (out / marker).exists():
        return
    theirs = sorted(
        {p.name for pattern in outputs for p in out.glob(pattern) if not (p.is_dir() and not any(p.iterdir()))}
    )
    if theirs:
        raise ConfigError(
            f"--out holds {', '.join(theirs)} but no {what} (no {marker}): this run would replace "
            + ("it" if len(theirs) == 1 else "them"),
            file=out,
            fix="choose another --out, or pass --overwrite to replace them",
        )


def check_output_path(path: str | Path) -> None:
    """Refuse, read only, a folder output that is an existing file, or that does not exist and cannot be made:
    its nearest existing parent is a file or not writable (a dry run says so; a run would fail at mkdir)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(
            "--out names an existing file, but this command writes a folder",
            file=path,
            fix="choose a folder name for --out",
        )
    if path.exists():
        return
    parent = next((p for p in path.absolute().parents if p.exists()), None)
    if parent is None or (parent.is_dir() and os.access(parent, os.W_OK | os.X_OK)):
        return
    why = "is a file, not a folder" if not parent.is_dir() else "is a folder this user cannot write to"
    raise ConfigError(
        f"--out cannot be made: {parent} {why}",
        file=path,
        fix="choose an --out inside a folder you can write to",
    )


def check_output_dir(path: str | Path, overwrite: bool | None = None) -> Path:
    """Refuse a folder output that is an existing file; create it otherwise.

    `overwrite` None: a run folder (runs reuse what matches inside). False: a generated folder, refused when
    it exists and is not empty. True: such a folder may exist; the command replaces its own files in it.
    """
    path = Path(path)
    check_output_path(path)
    if overwrite is False and path.is_dir() and any(path.iterdir()):
        raise ConfigError(
            "the --out folder exists and is not empty",
            file=path,
            fix="pass --overwrite to replace the files this command writes there, or choose another --out",
        )
    path.mkdir(parents=True, exist_ok=True)
    return path
