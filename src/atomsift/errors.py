"""User-facing errors: one paragraph naming the file, the record and the fix."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


class AtomsiftError(Exception):
    """An error the user can act on; the CLI prints it without a traceback.

    Args:
        problem: what went wrong, in one sentence.
        file: the file (or directory) involved, if any.
        record: the record (index or id) involved, if any.
        fix: what the user should do about it.
    """

    def __init__(
        self,
        problem: str,
        *,
        file: str | Path | None = None,
        record: str | int | None = None,
        fix: str | None = None,
    ) -> None:
        self.problem = problem
        self.file = None if file is None else str(file)
        self.record = record
        self.fix = fix
        super().__init__(self.message())

    def amend(self, *, file: str | Path | None = None, fix: str | None = None) -> None:
        """Set the file or the fix after the error was raised (by a caller that knows them), keeping str(self)
        in step with the fields."""
        if file is not None:
            self.file = str(file)
        if fix is not None:
            self.fix = fix
        self.args = (self.message(),)

    def message(self) -> str:
        parts = [self.problem.rstrip(".") + "."]
        if self.file is not None:
            parts.append(f"File: {self.file}.")
        if self.record is not None:
            parts.append(f"Record: {self.record}.")
        if self.fix:
            parts.append(f"Fix: {self.fix.rstrip('.')}.")
        return " ".join(parts)


class DataError(AtomsiftError):
    """A dataset file is missing, unreadable, malformed or holds invalid values."""


class ConfigError(AtomsiftError):
    """An option, format name or configuration value is wrong."""


def validation_problems(exc) -> str:
    """A pydantic ValidationError as one line: 'a.b: message; c: message'."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors())


def shortlist(items: list[str], n: int = 5) -> str:
    """The first `n` items of a list for a message, ', ...' when there are more."""
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")


def nearest(word: str, known: Iterable[str]) -> str | None:
    """The known name closest to a misspelt one (difflib ratio >= 0.6), or None."""
    hits = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return hits[0] if hits else None


def did_you_mean(unknown: Iterable[str], known: Iterable[str]) -> str:
    """ "did you mean 'energy_key' for 'energy_ky'? " for the unknown names that have a near known one, else ""."""
    known = list(known)
    pairs = [f"'{hit}' for '{bad}'" for bad in unknown if (hit := nearest(bad, known))]
    return f"did you mean {', '.join(pairs)}? " if pairs else ""


@contextmanager
def naming_file(path: str | Path | None) -> Iterator[None]:
    """Data errors raised inside that name no file get ``path``: a record checked deep in an extractor or a
    model knows its id, not the file it came from (settings errors are left alone: not the data's fault)."""
    try:
        yield
    except DataError as exc:
        if exc.file is None and path is not None:
            exc.amend(file=path)
        raise
