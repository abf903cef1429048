"""One rank of a distributed training run, as torchrun starts it: `python -m worker.train_rank
<bundle> <trainer pid>`. Every rank trains the bundle's model on its shard of each batch
(`mas.train_task` with a reducer over torch.distributed: gloo on CPU, nccl on CUDA); rank 0
reports each step as one JSON line on stdout and writes the trained weights into the bundle.
A rank whose own code raises says so on stdout too, so the trainer does not run the same bundle
again; an error inside torch.distributed (most often a peer that died) is left to torchrun.

A rank exits when torchrun or the trainer is gone: torchrun starts each rank in a session of its
own, so killing torchrun's process group does not reach the ranks, and a trainer killed outright
cannot stop torchrun."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Final

import torch
import torch.distributed as dist

from mas.learning import Progress, TrainingDiverged, train_task
from mas_stream.store.owned_directories import process_alive
from worker.training_bundle import read_bundle, write_trained

# Rank 0 reports a step at most this often (and always the last one); the trainer writes
# progress to Redis at most every half second anyway.
_REPORT_INTERVAL_S: Final = 0.1
_ORPHAN_CHECK_S: Final = 0.5
# A reported error is cut to this many characters: one line of a few KB reaches the pipe whole.
_RAISED_CHARS: Final = 1000
_DISTRIBUTED_PACKAGE: Final = f"{Path(dist.__file__).parent}{os.sep}"


class ProcessGroupReducer:
    """`mas.learning.GradientReducer` over the default process group: one all-reduce a step, of
    every tensor flattened into one buffer."""

    def __init__(self) -> None:
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()

    def all_reduce_sum(self, tensors: list[torch.Tensor]) -> None:
        flat = torch.cat([tensor.reshape(-1) for tensor in tensors])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for tensor in tensors:
            tensor.copy_(flat[offset : offset + tensor.numel()].view_as(tensor))
            offset += tensor.numel()


class ProgressLines:
    """Rank 0's steps as JSON lines on stdout, the last one always."""

    def __init__(self) -> None:
        self._reported_at = 0.0

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        if now - self._reported_at < _REPORT_INTERVAL_S and progress.step != progress.total_steps:
            return
        self._reported_at = now
        emit(
            {
                "epoch": progress.epoch,
                "step": progress.step,
                "total_steps": progress.total_steps,
                "loss": progress.loss,
            }
        )


def emit(event: dict[str, object]) -> None:
    print(json.dumps(event), flush=True)


def _exit_when_orphaned(trainer: int) -> None:
    torchrun = os.getppid()

    def watch() -> None:
        while os.getppid() == torchrun and process_alive(trainer):
            time.sleep(_ORPHAN_CHECK_S)
        os._exit(1)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


def _device(kind: str) -> torch.device:
    if kind != "cuda":
        return torch.device("cpu")
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    torch.cuda.set_device(device)
    return device


def train(bundle: Path) -> None:
    """Trains this rank's share of the bundle's run; rank 0 reports and keeps the result."""
    run = read_bundle(bundle)
    device = _device(run.device)
    run.model.to(device)
    if run.anchor is not None:
        run.anchor.to(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    try:
        reducer = ProcessGroupReducer()
        leader = reducer.rank == 0
        try:
            result = train_task(
                run.model,
                run.task,
                run.x,
                run.y,
                run.config,
                anchor=run.anchor,
                on_progress=ProgressLines() if leader else None,
                reducer=reducer,
            )
        except TrainingDiverged as error:
            if leader:
                emit({"diverged": str(error)})
            return
        if leader:
            write_trained(bundle, run.model)
            emit({"done": True, "steps": result.steps, "final_loss": result.final_loss})
        # No rank tears its connections down while rank 0 still writes: a failure in teardown
        # then comes after the result, which the trainer keeps.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].isdigit():
        print(
            "usage: python -m worker.train_rank <bundle directory> <trainer pid>", file=sys.stderr
        )
        return 2
    _exit_when_orphaned(int(argv[1]))
    torch.set_num_threads(1)
    try:
        train(Path(argv[0]))
    except Exception as error:
        if not _in_communication(error):
            rank = os.environ.get("RANK", "?")
            emit({"raised": f"rank {rank}: {type(error).__name__}: {error}"[:_RAISED_CHARS]})
        raise
    return 0


def _in_communication(error: BaseException) -> bool:
    """Raised inside torch.distributed: a lost peer, which a fresh run may not meet again."""
    frames = traceback.extract_tb(error.__traceback__)
    return any(frame.filename.startswith(_DISTRIBUTED_PACKAGE) for frame in frames)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
