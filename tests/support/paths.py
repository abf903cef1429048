"""The repository's root, for tests that read its files or start its processes there."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
