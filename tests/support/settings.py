"""The one builder of a test's settings: its own data folder and key prefix, on the CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mas_stream.settings import Settings
from mas_stream.store.keys import Keys


def make_settings(
    tmp_path: Path, keys: Keys, redis_url: str | None = None, **overrides: Any
) -> Settings:
    """`redis_url` only where the code under test connects through the settings."""
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "key_prefix": keys.prefix,
        "device": "cpu",
    }
    if redis_url is not None:
        values["redis_url"] = redis_url
    return Settings(**{**values, **overrides})
