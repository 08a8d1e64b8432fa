"""Progress bars that suit a terminal and a log file alike.

On a terminal, a tqdm bar redrawn in place; in a Jupyter notebook, tqdm's widget where ipywidgets is installed,
else the text bar (the notebook redraws it in place too). Elsewhere (a job log, `> run.log 2>&1`, an experiment worker) the
same bar as whole lines, at most one every `LOG_INTERVAL_S` seconds plus the first and the last, instead of
tqdm's carriage-return redraws, which pile up in a file as one unreadable line.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterable
from typing import IO, Any

from tqdm import tqdm

__all__ = ["LOG_INTERVAL_S", "progress_bar"]

LOG_INTERVAL_S = 30.0


class _Lines:
    """A text stream for tqdm that turns each in-place redraw ('\\r' + status) into one line."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        line = text.replace("\r", "").rstrip()
        if line:
            self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    desc: str,
    unit: str,
    leave: bool = True,
    disable: bool = False,
    file: IO[str] | None = None,
) -> tqdm:
    """A tqdm bar on `file` (stderr): redrawn in place on a terminal, whole lines now and then elsewhere."""
    stream = file if file is not None else sys.stderr
    in_notebook = type(stream).__module__.startswith("ipykernel")  # a Jupyter kernel's stdout / stderr
    if in_notebook and file is None and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.notebook import tqdm as widget

        return widget(iterable, total=total, desc=desc, unit=unit, leave=leave, disable=disable)
    if stream.isatty() or in_notebook:
        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, disable=disable, file=stream)
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        leave=True,  # a log keeps the last line (a terminal's bar may vanish)
        disable=disable,
        file=_Lines(stream),
        mininterval=LOG_INTERVAL_S,
        miniters=1,  # else tqdm's monitor thread forces a (stale) line every maxinterval once miniters grew
        ncols=100,
        ascii=True,
    )
