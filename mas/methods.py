"""The names of the importance estimators `mas.importance` picks from.

Torch-free on purpose: the settings name them, and the supervisor reads the settings without
loading torch."""

from __future__ import annotations

from typing import Literal, get_args

Method = Literal["exact", "batch", "local", "jacobian"]
METHODS: tuple[str, ...] = get_args(Method)
