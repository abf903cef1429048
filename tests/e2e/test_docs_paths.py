"""The files the README and docs/ name exist, and the architecture trace is as short as it says."""

from __future__ import annotations

import re

from tests.support.paths import ROOT
from tests.support.readme import README, section

DOCS = {path.name: path.read_text(encoding="utf-8") for path in (ROOT / "docs").glob("*.md")}
SOURCE_PATH = re.compile(r"\b(?:mas|mas_stream|service|worker|tests)/[\w/]+\.py\b")
STEP = re.compile(r"^\d+\. \*\*`([\w/]+\.py)`\*\*", re.M)
TRACE = ("The path of one prediction, to Ω", "The path of one new task, to a new served version")


def test_every_source_file_the_readme_and_docs_name_exists() -> None:
    named = {path for text in [README, *DOCS.values()] for path in SOURCE_PATH.findall(text)}
    assert named, "the docs name no source file"
    assert sorted(path for path in named if not (ROOT / path).is_file()) == []


def test_the_architecture_trace_names_each_file_once_and_at_most_twelve() -> None:
    paths = [section(title, DOCS["architecture.md"]) for title in TRACE]
    steps = [file for text in paths for file in STEP.findall(text)]
    assert len(steps) == len(set(steps)), f"a file is a step twice: {steps}"
    assert len(steps) <= 12, steps
    drawn = {file for text in paths for file in SOURCE_PATH.findall(text.split("```")[1])}
    assert drawn <= set(steps), f"drawn but not a step: {sorted(drawn - set(steps))}"
    assert f"The trace names {len(steps)} files" in paths[1]
