"""`python -m mas_stream.probe ROLE`: the health check of a container or pod of one role.

Standard library only: it runs every few seconds, and importing the settings would import torch.
It asks the process on the port this environment configures for that role (exit 0), so a
container started with another MAS_PORT is still probed where it listens.
"""

from __future__ import annotations

import os
import sys
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Final

# role -> (variable, default port, path). The defaults are the Settings' (a test compares them).
TARGETS: Final = {
    "api": ("MAS_PORT", 8000, "/healthz"),
    "importance": ("MAS_IMPORTANCE_METRICS_PORT", 9101, "/metrics"),
    "trainer": ("MAS_TRAINER_METRICS_PORT", 9102, "/metrics"),
}
TIMEOUT_S: Final = 2.0


def probe_url(role: str, environ: Mapping[str, str]) -> str:
    variable, default, path = TARGETS[role]
    return f"http://127.0.0.1:{int(environ.get(variable, default))}{path}"


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if len(args) != 1 or args[0] not in TARGETS:
        print(f"usage: python -m mas_stream.probe {{{','.join(TARGETS)}}}", file=sys.stderr)
        return 2
    try:
        url = probe_url(args[0], os.environ)
        with urllib.request.urlopen(url, timeout=TIMEOUT_S):
            return 0
    except (OSError, ValueError) as error:
        print(f"{args[0]} unhealthy: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
