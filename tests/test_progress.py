"""Progress bars: redrawn in place on a terminal, whole lines in a log."""

from __future__ import annotations

import io

from atomsift.progress import progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_whole_lines_and_keeps_the_last():
    log = io.StringIO()
    for _ in progress_bar(range(50), desc="features upstream", unit="struct", leave=False, file=log):
        pass
    text = log.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and lines and all(line.startswith("features upstream:") for line in lines)
    assert lines[0].split(":")[1].strip().startswith("0%") and "50/50" in lines[-1]
    assert len(lines) <= 3  # the first, the last, and none in between within the log interval


def test_a_terminal_gets_tqdm_redraws():
    term = _Terminal()
    for _ in progress_bar(range(5), desc="features", unit="struct", file=term):
        pass
    assert "\r" in term.getvalue() and "5/5" in term.getvalue()


def test_a_jupyter_kernel_stream_gets_redraws_not_log_lines():
    """ipykernel's streams are no terminal, but a notebook draws '\\r' in place: it printed a log's lines there."""
    kernel_stream = type("OutStream", (io.StringIO,), {"__module__": "ipykernel.iostream"})()
    for _ in progress_bar(range(5), desc="predict", unit="struct", file=kernel_stream):
        pass
    assert "\r" in kernel_stream.getvalue() and "5/5" in kernel_stream.getvalue()
