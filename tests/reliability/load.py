"""Mixed traffic for the reliability suites: `/v1/predict` JSON, OIP binary and admin reads from
client threads, every request's outcome kept, so a test can say what failed, when, and which rows
each version served.

    with Traffic(base_url, digits, threads=32) as load:
        ...                          # inject a fault, swap a version
    load.outcomes                    # every request, in the order they started

Each thread has its own keep-alive connection. A request that gets no answer (connection refused
or reset while the API is down) is recorded with `status` None, and its thread pauses 50 ms, so
an outage is seen, not spun on.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final

import httpx
import numpy as np

from mas_stream.records.sample import Sample
from tests.support.waiting import wait_until

HEADER_LENGTH: Final = "Inference-Header-Content-Length"
ADMIN_READS: Final = ("/v1/models", "/v1/jobs", "/v1/importance", "/v1/tasks", "/readyz")
# Of every 20 requests: 9 /v1/predict JSON, 9 OIP binary in and out, 2 admin reads.
MIX: Final = ("json",) * 9 + ("oip",) * 9 + ("admin",) * 2
MAX_ROWS: Final = 4


@dataclass(frozen=True)
class Outcome:
    """One request. `problem` is None for a correct answer: a 200 whose body names a version and
    has one prediction per row (admin reads: any 200)."""

    kind: str
    path: str
    started: float
    ended: float
    status: int | None
    problem: str | None
    rows: int = 0  # rows a prediction sent, answered or not
    sample: Sample | None = None  # an answered prediction's rows, under the version that served

    @property
    def version(self) -> int | None:
        return None if self.sample is None else self.sample.version


class Traffic:
    def __init__(
        self,
        base_url: str,
        rows: np.ndarray,
        *,
        threads: int,
        task: str = "t0",
        seed: int = 0,
        timeout: float = 60.0,
    ) -> None:
        self._base = base_url
        self._rows = np.ascontiguousarray(rows, dtype=np.float32)
        self._task = task
        self._seed = seed
        self._timeout = timeout
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._by_thread: list[list[Outcome]] = [[] for _ in range(threads)]
        self._answered = 0
        self.seen: dict[int, int] = {}  # answers per version named
        self._threads = [
            threading.Thread(target=self._loop, args=(i,), name=f"traffic-{i}", daemon=True)
            for i in range(threads)
        ]
        self.outcomes: list[Outcome] = []

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self._timeout + 10)
        merged = [outcome for outcomes in self._by_thread for outcome in outcomes]
        self.outcomes = sorted(merged, key=lambda outcome: outcome.started)

    @property
    def answered(self) -> int:
        """Correct answers so far, all kinds."""
        return self._answered

    def wait_for_answers(self, more: int, timeout: float = 60.0) -> None:
        """Until `more` further requests were answered correctly."""
        target = self._answered + more
        wait_until(lambda: self._answered >= target, timeout=timeout, interval=0.02)

    def wait_for_version(self, version: int, answers: int = 1, timeout: float = 60.0) -> None:
        """Until `answers` further predictions were answered by `version`."""
        target = self.seen.get(version, 0) + answers
        wait_until(lambda: self.seen.get(version, 0) >= target, timeout=timeout, interval=0.02)

    def _loop(self, index: int) -> None:
        rng = np.random.default_rng(self._seed * 1000 + index)
        send: dict[str, Callable[[httpx.Client, np.random.Generator], Outcome]] = {
            "json": self._predict_json,
            "oip": self._predict_oip,
            "admin": self._admin_read,
        }
        with httpx.Client(base_url=self._base, timeout=self._timeout) as client:
            while not self._stop.is_set():
                outcome = send[MIX[rng.integers(len(MIX))]](client, rng)
                self._by_thread[index].append(outcome)
                if outcome.problem is None:
                    with self._lock:
                        self._answered += 1
                        if outcome.version is not None:
                            self.seen[outcome.version] = self.seen.get(outcome.version, 0) + 1
                elif outcome.status is None:
                    self._stop.wait(0.05)

    def _pick(self, rng: np.random.Generator) -> np.ndarray:
        return self._rows[rng.integers(0, len(self._rows), rng.integers(1, MAX_ROWS + 1))]

    def _predict_json(self, client: httpx.Client, rng: np.random.Generator) -> Outcome:
        rows = self._pick(rng)
        body = {"task": self._task, "inputs": rows.tolist()}

        def read(response: httpx.Response) -> int:
            answer = response.json()
            if len(answer["predictions"]) != len(rows):
                raise ValueError(f"{len(answer['predictions'])} predictions for {len(rows)} rows")
            return int(answer["model_version"])

        return self._send(client, "json", "POST", "/v1/predict", rows, read, json=body)

    def _predict_oip(self, client: httpx.Client, rng: np.random.Generator) -> Outcome:
        rows = self._pick(rng)
        raw = rows.astype("<f4").tobytes()
        tensor = {"name": "input", "shape": list(rows.shape), "datatype": "FP32"}
        header = json.dumps(
            {
                "inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}],
                "parameters": {"task": self._task, "binary_data_output": True},
            }
        ).encode()
        headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))}

        def read(response: httpx.Response) -> int:
            length = int(response.headers[HEADER_LENGTH])
            answer = json.loads(response.content[:length])
            sizes = sum(int(o["parameters"]["binary_data_size"]) for o in answer["outputs"])
            predictions = next(o for o in answer["outputs"] if o["name"] == "predictions")
            if predictions["shape"] != [len(rows)] or len(response.content) != length + sizes:
                raise ValueError(f"outputs {answer['outputs']} for {len(rows)} rows")
            return int(answer["model_version"])

        body = {"content": header + raw, "headers": headers}
        return self._send(client, "oip", "POST", "/v2/models/mas/infer", rows, read, **body)

    def _admin_read(self, client: httpx.Client, rng: np.random.Generator) -> Outcome:
        path = ADMIN_READS[rng.integers(len(ADMIN_READS))]
        return self._send(client, "admin", "GET", path, None, None)

    def _send(
        self,
        client: httpx.Client,
        kind: str,
        method: str,
        path: str,
        rows: np.ndarray | None,
        read: Callable[[httpx.Response], int] | None,
        **request: Any,
    ) -> Outcome:
        started = time.monotonic()
        sent = 0 if rows is None else len(rows)
        try:
            response = client.request(method, path, **request)
        except httpx.TransportError as error:
            return Outcome(kind, path, started, time.monotonic(), None, repr(error), sent)
        ended = time.monotonic()
        if response.status_code != 200:
            problem = f"{response.status_code}: {response.text[:200]}"
            return Outcome(kind, path, started, ended, response.status_code, problem, sent)
        if rows is None or read is None:
            return Outcome(kind, path, started, ended, 200, None)
        try:
            sample = Sample(read(response), self._task, rows)
        except (ValueError, KeyError, StopIteration) as error:
            return Outcome(kind, path, started, ended, 200, f"bad answer: {error!r}", sent)
        return Outcome(kind, path, started, ended, 200, None, sent, sample)


def served(outcomes: list[Outcome]) -> list[Sample]:
    """The rows of every answered prediction, as the service forwards them."""
    return [outcome.sample for outcome in outcomes if outcome.sample is not None]


def served_rows(outcomes: list[Outcome]) -> int:
    return sum(len(sample.rows) for sample in served(outcomes))


def failures(outcomes: list[Outcome]) -> list[Outcome]:
    return [outcome for outcome in outcomes if outcome.problem is not None]


def summary(outcomes: list[Outcome]) -> str:
    """One line for the test log: requests by kind, failures, rows served."""
    kinds = {kind: sum(o.kind == kind for o in outcomes) for kind in ("json", "oip", "admin")}
    return (
        f"{len(outcomes)} requests {kinds}, {len(failures(outcomes))} failed, "
        f"{served_rows(outcomes)} rows served"
    )
