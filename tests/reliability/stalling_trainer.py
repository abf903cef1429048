"""`mas-stream worker trainer`, which a test can hold inside a publish, for a SIGKILL there.

While `$RELIABILITY_STALL_DIR/publish` exists, the trainer's next publish writes the
version's files into its staging directory, touches `$RELIABILITY_STALL_DIR/inside` and
stops for good before the rename: the moment a kill leaves a half-written version on disk.
Without that file it is the plain trainer.

    python -m tests.reliability.stalling_trainer
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Final

STALL_DIRECTORY: Final = "RELIABILITY_STALL_DIR"


def _held_inside_publish(directory: Path) -> None:
    from mas_stream.store import registry

    real_save = registry.save_model

    def save_then_stall(*args: Any, **kwargs: Any) -> None:
        real_save(*args, **kwargs)
        if (directory / "publish").exists():
            (directory / "inside").touch()
            time.sleep(3600)

    registry.save_model = save_then_stall


if __name__ == "__main__":
    from mas_stream import cli

    _held_inside_publish(Path(os.environ[STALL_DIRECTORY]))
    sys.exit(cli.main(["worker", "trainer"]))
