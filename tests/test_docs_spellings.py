"""The README and docs show commands in the current spellings (docs/cli.md), not the old ones kept for a release."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NEEDS_OUT = ("model init", "model convert", "data convert")  # their positional output is the old spelling
OLD_OPTIONS = re.compile(r"\s(--n|--method|--max-records)(\s|=|$)")


def commands(page: Path) -> list[str]:
    """Each `atomsift ...` command in the page's code blocks, continuation lines joined."""
    out, block, current = [], False, ""
    for line in page.read_text().splitlines():
        if line.lstrip().startswith("```"):
            block, current = not block, ""
            continue
        if not block:
            continue
        text = line.split("  #")[0].strip()
        current = f"{current} {text}" if current else text
        if current.endswith("\\"):
            current = current[:-1].rstrip()
            continue
        if current.startswith(("atomsift ", "$ atomsift ")):
            out.append(current.removeprefix("$ "))
        current = ""
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_documented_commands_use_the_current_spellings(page):
    found = commands(page)
    for cmd in found:
        if any(cmd.startswith(f"atomsift {c} ") for c in NEEDS_OUT):
            assert "--out" in cmd, f"{page.name}: {cmd}"
        assert not OLD_OPTIONS.search(cmd), f"{page.name}: {cmd}"


def test_the_scan_finds_the_commands_it_checks():
    found = [c for page in PAGES for c in commands(page)]
    assert sum(c.startswith("atomsift model init ") for c in found) >= 3
    assert any(c.startswith("atomsift data convert ") for c in found)
