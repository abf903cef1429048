"""How a job's task is trained: in the trainer's process (MAS_TRAIN_PROCS=1), or as a torchrun
DDP job of MAS_TRAIN_PROCS processes on this node (gloo on CPU, nccl on CUDA).

The trainer keeps the job: its lease, its progress reports, its cancellation and what it
publishes. A distributed run only trains. The trainer writes the prepared model, the anchor and
the data into a fresh bundle directory (`worker.training_bundle`), starts torchrun on
`worker.train_rank`, turns rank 0's JSON progress lines into `on_progress` calls, and on
`should_stop` ends torchrun and its ranks and raises TrainingStopped, like the in-process loop.
Every rank takes the single-process step (`mas.learning.GradientReducer`), so the weights it
loads back are the single-process ones up to the order of float sums.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, Protocol

import torch

import worker
from mas.learning import (
    Progress,
    TrainConfig,
    TrainingDiverged,
    TrainingStopped,
    TrainResult,
    train_task,
)
from mas.model import MultiHeadNet
from mas.penalty import QuadraticAnchor
from mas_stream.settings import Settings
from mas_stream.store.owned_directories import OwnedDirectories
from worker.training_bundle import TrainingRun, read_trained, write_bundle

log = logging.getLogger(__name__)

# How often the trainer checks for a stop while the ranks train (its reports throttle Redis).
_POLL_S: Final = 0.1
# How long torchrun gets to end its ranks after SIGTERM before its group is killed.
_STOP_GRACE_S: Final = 10.0
# Enough for a rank's traceback and, after it, torchrun's summary table (17 lines a rank).
_STDERR_LINES: Final = 80
# A run that crashes (a rank dies, or loses its peer) is tried this many times, each with a fresh
# torchrun: a crash is a job's failure only when it repeats. A rank whose own code raised is not
# retried. (torchrun's own --max-restarts restarts the ranks on its old rendezvous, where a
# restarted gloo rank could not reach its peer.)
_ATTEMPTS: Final = 2
# How torchrun's summary table names a failed rank, and the signal that ended it.
_RANK_LINE: Final = re.compile(r"^\s*rank\s*: (\d+)")
_SIGNAL_LINE: Final = re.compile(r"Signal \d+ \(\w+\) received by PID \d+")
# A bundle is named after its task (letters, digits, '-' and '_') and then its owner.
_BUNDLE_PREFIX: Final = r"[A-Za-z0-9][A-Za-z0-9_-]*\."


class RunFailed(RuntimeError):
    """torchrun failed before rank 0 had written the trained weights, and no rank's own code
    raised: a crash (a signal, a lost peer) that a fresh run may not meet again. `summary` is
    the one line a job's result keeps of it, when a second run then succeeds."""

    def __init__(self, message: str, summary: str) -> None:
        super().__init__(message)
        self.summary = summary


class RankRaised(RuntimeError):
    """A rank's own code raised, outside its communication: the same bundle would raise again."""


class TaskTrainer(Protocol):
    """`mas.train_task`'s signature, as far as a job uses it."""

    def __call__(
        self,
        model: MultiHeadNet,
        task: str,
        x: torch.Tensor,
        y: torch.Tensor,
        config: TrainConfig,
        *,
        anchor: QuadraticAnchor | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> TrainResult: ...


def task_trainer(settings: Settings) -> TaskTrainer:
    if settings.train_procs == 1:
        return train_task
    return DistributedTrainer(settings.train_procs, training_bundles(settings))


def training_bundles(settings: Settings) -> OwnedDirectories:
    """A bundle lives as long as its run, which may be days: another host's is never removed."""
    return OwnedDirectories(
        settings.data_dir / "training", _BUNDLE_PREFIX, foreign_age_seconds=None
    )


class DistributedTrainer:
    """Trains one task on `procs` processes; each run's bundle lives while it runs and is removed
    whatever the outcome (a trainer killed meanwhile leaves it to `remove_abandoned`)."""

    def __init__(self, procs: int, bundles: OwnedDirectories) -> None:
        self.procs = procs
        self.bundles = bundles

    def __repr__(self) -> str:
        return f"DistributedTrainer({self.procs} processes)"

    def __call__(
        self,
        model: MultiHeadNet,
        task: str,
        x: torch.Tensor,
        y: torch.Tensor,
        config: TrainConfig,
        *,
        anchor: QuadraticAnchor | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> TrainResult:
        started = time.perf_counter()
        with self.bundles.owned(f"{task}.", create=True) as bundle:
            device = next(model.parameters()).device
            write_bundle(bundle, TrainingRun(model, task, x, y, config, anchor, device.type))
            outcome, reruns = self._run(bundle, on_progress, should_stop or (lambda: False))
            model.load_state_dict(read_trained(bundle), strict=True)
        steps, final_loss = int(outcome["steps"]), float(outcome["final_loss"])
        return TrainResult(steps, final_loss, time.perf_counter() - started, reruns)

    def _run(
        self,
        bundle: Path,
        on_progress: Callable[[Progress], None] | None,
        should_stop: Callable[[], bool],
    ) -> tuple[dict[str, Any], tuple[str, ...]]:
        """Rank 0's final event, and a line for each failed run before it: a failed run is
        started again from the bundle, from step 0."""

        def attempt() -> dict[str, Any]:
            with Torchrun(self._command(bundle)) as torchrun:
                return torchrun.follow(on_progress, should_stop)

        reruns: list[str] = []
        for number in range(1, _ATTEMPTS):
            try:
                return attempt(), tuple(reruns)
            except RunFailed as error:
                log.warning("training run %d of %d failed; again: %s", number, _ATTEMPTS, error)
                reruns.append(f"run {number} failed {error.summary}; trained again from step 0")
        return attempt(), tuple(reruns)

    def _command(self, bundle: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nnodes",
            "1",
            "--nproc-per-node",
            str(self.procs),
            "-m",
            "worker.train_rank",
            str(bundle),
            str(os.getpid()),
        ]


class Torchrun:
    """torchrun in a session of its own, its stdout read as JSON events and the tail of its
    stderr kept for the error. Leaving the block ends it, and with it every rank."""

    def __init__(self, command: list[str]) -> None:
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.stderr_tail: deque[str] = deque(maxlen=_STDERR_LINES)
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_rank_environment(),
            start_new_session=True,
            text=True,
        )
        self._readers = [
            threading.Thread(target=self._read_events, name="torchrun-stdout", daemon=True),
            threading.Thread(target=self._read_stderr, name="torchrun-stderr", daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def __enter__(self) -> Torchrun:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        """SIGTERM makes torchrun end its ranks (each in a session of its own) and wait for them;
        a torchrun that does not is killed, and its orphaned ranks exit on their own."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                log.warning("torchrun %d ignored SIGTERM; killing it", self.process.pid)
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        for reader in self._readers:
            reader.join(_STOP_GRACE_S)

    def follow(
        self,
        on_progress: Callable[[Progress], None] | None,
        should_stop: Callable[[], bool],
    ) -> dict[str, Any]:
        """Passes rank 0's progress on until the run ends; its final event. TrainingStopped
        as soon as `should_stop`, TrainingDiverged when the loss did; when torchrun failed
        before rank 0 had written the trained weights, RankRaised with the first error a rank
        reported, else RunFailed, each with the tail of stderr."""
        outcome: dict[str, Any] = {}
        raised: str | None = None
        step, total_steps = 0, 0
        while True:
            if should_stop():
                raise TrainingStopped(f"stopped at step {step} of {total_steps}")
            try:
                event = self.events.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if event is None:
                break
            if "step" in event:
                step, total_steps = int(event["step"]), int(event["total_steps"])
                if on_progress is not None:
                    loss = float(event["loss"])
                    on_progress(Progress(int(event["epoch"]), step, total_steps, loss))
            elif "raised" in event:
                raised = raised or str(event["raised"])
            else:
                outcome = event
        if self.process.wait() != 0:
            if not outcome.get("done"):
                if raised is not None:
                    raise RankRaised(f"{raised}; {self.failure()}")
                raise RunFailed(self.failure(), f"at step {step} of {total_steps}: {self.status()}")
            # Rank 0 wrote the weights after every rank's last all-reduce, so they are the
            # whole run's: a rank that crashed while tearing down takes nothing from them.
            log.warning("kept the trained weights of a run that then failed: %s", self.failure())
        if "diverged" in outcome:
            raise TrainingDiverged(str(outcome["diverged"]))
        if not outcome.get("done"):
            raise RunFailed(
                f"rank 0 ended without its weights; {self.failure()}",
                f"at step {step} of {total_steps}: rank 0 ended without its weights",
            )
        return outcome

    def failure(self) -> str:
        """Once torchrun has exited: its status and the last lines of its and its ranks' stderr."""
        for reader in self._readers:
            reader.join(_STOP_GRACE_S)
        return f"torchrun exited with status {self.process.returncode}: " + " | ".join(
            self.stderr_tail
        )

    def status(self) -> str:
        """Once torchrun has exited: its status, and the rank and signal of its summary's root
        cause when it names one (the other ranks' failures are torchrun's SIGTERMs)."""
        lines = list(self.stderr_tail)
        causes = [i for i, line in enumerate(lines) if "Root Cause" in line]
        root = lines[causes[-1] :] if causes else []
        rank = next((m.group(1) for m in map(_RANK_LINE.search, root) if m), "?")
        signal_line = next((m.group(0) for m in map(_SIGNAL_LINE.search, root) if m), None)
        exited = f"torchrun exited with status {self.process.returncode}"
        return exited if signal_line is None else f"{exited}: rank {rank}, {signal_line}"

    def _read_events(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            event = _event(line)
            if event is not None:
                self.events.put(event)
        self.events.put(None)

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr_tail.append(line.rstrip())


def _event(line: str) -> dict[str, Any] | None:
    """The ranks' JSON lines; anything else on stdout (a library's print) is not an event."""
    try:
        event = json.loads(line)
    except ValueError:
        return None
    if isinstance(event, dict) and event.keys() & {"step", "done", "diverged", "raised"}:
        return event
    return None


def _rank_environment() -> dict[str, str]:
    """One thread per rank (the ranks share the node's cores), and the ranks import this
    checkout's `worker` package, whatever the trainer's working directory."""
    root = str(Path(worker.__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": path}
