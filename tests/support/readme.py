"""README.md (and the docs) as the tests read them: sections, tables and code blocks."""

from __future__ import annotations

import re

from tests.support.paths import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


def section(title: str, document: str = README) -> str:
    """The text under `## title`, up to the next level-2 heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", document, re.M | re.S)
    assert match, f"no '## {title}' section"
    return match.group(1)


def table_rows(text: str) -> list[list[str]]:
    """Body rows of the first Markdown table in `text`, cells stripped ('\\|' kept as '|')."""
    rows: list[list[str]] = []
    for line in text.splitlines():
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
        rows.append(cells)
    assert len(rows) > 2, "no table found"
    return rows[2:]  # header and separator


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, re.M | re.S)
