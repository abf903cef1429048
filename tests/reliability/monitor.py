"""Once a second during a soak, in a thread: the API's resident memory (VmRSS from /proc) and
the sample stream's backlog (entries not read yet, and read but not committed)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from mas_stream.store.traffic import SampleStream


@dataclass(frozen=True)
class Reading:
    seconds: float
    rss_mib: float
    lag: int
    pending: int

    @property
    def backlog(self) -> int:
        """Entries the importance worker has not committed: delivered, or not read yet."""
        return self.lag + self.pending


def resident_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


class Monitor:
    def __init__(self, pid: int, stream: SampleStream, interval: float = 1.0) -> None:
        self._pid = pid
        self._stream = stream
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="soak-monitor", daemon=True)
        self._started = 0.0
        self.readings: list[Reading] = []

    def __enter__(self) -> Monitor:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(10)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            stats = self._stream.stats()
            self.readings.append(
                Reading(
                    time.monotonic() - self._started,
                    resident_mib(self._pid),
                    stats.lag or 0,
                    stats.pending,
                )
            )

    def growth_after(self, seconds: float) -> tuple[float, float]:
        """(RSS at the first reading at or after `seconds`, the most it grew beyond that)."""
        later = [reading for reading in self.readings if reading.seconds >= seconds]
        assert later, f"no reading after {seconds}s"
        return later[0].rss_mib, max(r.rss_mib for r in later) - later[0].rss_mib
