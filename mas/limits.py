"""The bounds user data must keep, for every entry point to check alike.

Torch-free on purpose: the service's client and records check them without loading torch."""

from __future__ import annotations

import re

import numpy as np

FLOAT32_MAX = float(np.finfo(np.float32).max)
TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
# Most classes one task may have, declared or implied by its largest label: each is a head row.
MAX_CLASSES = 100_000
