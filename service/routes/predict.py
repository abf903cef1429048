"""POST /v1/predict (this service's own JSON protocol, on the hottest path of the service), and
the prediction path both protocols take: pick the version and task, batch, forward samples.

Micro-batching: concurrent requests for one (version, task) share one forward pass. Requests
queue on the event loop; one collector coroutine gathers what is waiting (at most `max_batch`
rows, waiting at most `max_wait_ms` for batch-mates) and runs the forward passes on a single
worker thread, so the event loop never computes and torch never competes with itself. While a
forward runs, new requests pile up and form the next, larger batch: under load the batches grow
by themselves. A request larger than `max_batch` rows is queued one `max_batch` slice at a time,
each after the previous one is answered, so requests that arrive meanwhile are served between
its slices instead of waiting for all of it. Each request carries the LoadedVersion it was
validated against, so a request admitted before a swap is answered by the old version, and says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field

import mas
from mas_stream.store.registry import LoadedVersion, ServedModel
from service.auth import check_inference_token, require_inference
from service.context import get_runtime
from service.direct_route import DirectRoute
from service.forwarder import SampleForwarder
from service.problems import InvalidValue, NotServed, ServiceUnavailable, TooLarge, UnknownTask
from service.request_body import read_json
from service.responses import errors, json_body

log = logging.getLogger(__name__)

router = APIRouter(tags=["predict"], route_class=DirectRoute)


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: str | None = Field(None, description="Task head; default: the newest task served.")
    inputs: list[Any] = Field(
        description="Rows, each flattened or nested to the model's input shape.",
        examples=[[[0.0, 0.5, 1.0]]],
    )


class PredictResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_version: int = Field(description="The version that computed these predictions.")
    task: str
    predictions: list[int] = Field(description="Most probable class per row.")
    probabilities: list[list[float]] = Field(description="Softmax probabilities per row.")


@router.post(
    "/v1/predict",
    response_model=PredictResponse,
    dependencies=[Depends(require_inference)],  # for the document: the endpoint checks it
    responses=errors(415, 422, 503),
    openapi_extra=json_body(PredictRequest),
)
async def predict(request: Request) -> Response:
    await check_inference_token(request)
    body = await read_json(request, PredictRequest)
    inference = get_runtime(request).inference
    loaded = inference.served_version()
    task = inference.task_of(loaded, body.task)
    result = await inference.predict(loaded, task, inference.batch(loaded, body.inputs, "inputs"))
    answer = PredictResponse(
        model_version=result.version,
        task=result.task,
        predictions=result.predictions.tolist(),
        probabilities=result.probabilities.tolist(),
    )
    return Response(answer.model_dump_json(), media_type="application/json")


NO_MODEL_MESSAGE = (
    "no model is being served yet: POST a labeled task to /v1/tasks to train the first one"
)


@dataclass(frozen=True)
class Prediction:
    version: int
    task: str
    probabilities: np.ndarray

    @property
    def predictions(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1).astype(np.int64)


class Inference:
    def __init__(
        self,
        served: ServedModel,
        batcher: MicroBatcher,
        forwarder: SampleForwarder,
        max_rows: int,
    ) -> None:
        self._served = served
        self._batcher = batcher
        self._forwarder = forwarder
        self._max_rows = max_rows

    def served_version(self, version: int | None = None, field: str = "version") -> LoadedVersion:
        """The version serving now; refused before the first model, and for another version."""
        loaded = self._served.current
        if loaded is None:
            raise ServiceUnavailable(None, NO_MODEL_MESSAGE, retry_after=5)
        if version is not None and version != loaded.version:
            raise NotServed(
                field, f"version {version} is not served (serving version {loaded.version})"
            )
        return loaded

    @staticmethod
    def task_of(loaded: LoadedVersion, task: object, field: str = "task") -> str:
        """The named task, or the newest task the version knows when none is named."""
        known = list(loaded.model.tasks)
        if task is None:
            if not known:
                raise ServiceUnavailable(None, f"model version {loaded.version} has no task yet")
            return known[-1]
        if not isinstance(task, str) or task not in loaded.model.tasks:
            raise UnknownTask(
                field, f"unknown task {task!r}; model version {loaded.version} knows {known}"
            )
        return task

    def batch(self, loaded: LoadedVersion, values: object, field: str) -> torch.Tensor:
        """[n, *input_shape] float32 from rows given flattened or nested to the input shape."""
        self.refuse_rows(len(values) if isinstance(values, list | np.ndarray) else 0, field)
        return mas.validate_inputs(values, input_shape=loaded.model.input_shape, field=field)

    async def decode(
        self, loaded: LoadedVersion, values: Callable[[], object], field: str, *, off_loop: bool
    ) -> torch.Tensor:
        """`batch` of what `values` decodes; for a large body both run on a worker thread, so the
        event loop answers small requests meanwhile (copies and checks of 100 MB take 0.1 s+)."""
        if off_loop:
            return await asyncio.to_thread(lambda: self.batch(loaded, values(), field))
        return self.batch(loaded, values(), field)

    def refuse_rows(self, rows: int, field: str) -> None:
        """Checked before the rows are converted, so an oversized request costs no memory."""
        if rows > self._max_rows:
            raise TooLarge(field, f"has {rows} rows; at most {self._max_rows} (MAS_MAX_ROWS)")

    async def predict(
        self, loaded: LoadedVersion, task: str, batch: torch.Tensor, field: str = "inputs"
    ) -> Prediction:
        probabilities = await self._batcher.predict(loaded, task, batch)
        overflowed = np.flatnonzero(~np.isfinite(probabilities).all(axis=1))
        if overflowed.size:  # answered with null, and forwarded into Ω, before
            raise InvalidValue(
                field,
                f"row {overflowed[0]} is too large for the model: its outputs overflow float32 "
                "(scale inputs to order 1)",
            )
        self._forwarder.offer(loaded.version, task, batch.numpy())
        return Prediction(loaded.version, task, probabilities)


@dataclass
class _Request:
    loaded: LoadedVersion
    task: str
    inputs: torch.Tensor
    future: asyncio.Future[np.ndarray] = field(repr=False)

    @property
    def key(self) -> tuple[int, str]:
        return self.loaded.version, self.task


class MicroBatcher:
    def __init__(
        self,
        max_batch: int,
        max_wait_ms: float,
        on_forward: Callable[[int], None] = lambda rows: None,
    ) -> None:
        self._max_batch = max(1, max_batch)
        self._max_wait = max(0.0, max_wait_ms) / 1000.0
        self._on_forward = on_forward
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mas-forward")
        self._queue: asyncio.Queue[_Request] = asyncio.Queue()
        self._held: _Request | None = None  # took a request that did not fit; it goes next
        self._collector: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._collector = asyncio.get_running_loop().create_task(self._collect_forever())

    async def stop(self) -> None:
        if self._collector is not None:
            self._collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._collector
        held = [self._held] if self._held is not None else []
        _fail_unanswered([*held, *_drain(self._queue)])
        self._executor.shutdown(wait=True)

    async def predict(self, loaded: LoadedVersion, task: str, inputs: torch.Tensor) -> np.ndarray:
        """Softmax probabilities [n, classes] for `inputs` [n, *input_shape] (float32, CPU)."""
        if len(inputs) <= self._max_batch:  # the common case: no split, no concatenation
            return await self._answer_slice(loaded, task, inputs)
        parts = [
            await self._answer_slice(loaded, task, part) for part in inputs.split(self._max_batch)
        ]
        return np.concatenate(parts)

    async def _answer_slice(
        self, loaded: LoadedVersion, task: str, inputs: torch.Tensor
    ) -> np.ndarray:
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Request(loaded, task, inputs, future))
        return await future

    async def _collect_forever(self) -> None:
        while True:
            batch: list[_Request] = []
            try:
                await self._collect(batch)
                await self._answer(batch)
            finally:
                _fail_unanswered(batch)  # only when cancelled part-way (shutdown)

    async def _answer(self, batch: list[_Request]) -> None:
        loop = asyncio.get_running_loop()
        groups: dict[tuple[int, str], list[_Request]] = defaultdict(list)
        for request in batch:
            if not request.future.done():  # a client that went away is not computed for
                groups[request.key].append(request)
        for requests in groups.values():
            try:
                results = await loop.run_in_executor(self._executor, self._forward, requests)
            except Exception as error:
                log.exception("forward pass failed")
                for request in requests:
                    if not request.future.done():
                        request.future.set_exception(error)
                continue
            for request, result in zip(requests, results, strict=True):
                if not request.future.done():
                    request.future.set_result(result)

    async def _collect(self, batch: list[_Request]) -> None:
        """Whole requests (each at most max_batch rows), as many as fit in max_batch rows.
        Fills `batch` in place, so a shutdown part-way still sees whom to answer."""
        first, self._held = self._held or await self._queue.get(), None
        batch.append(first)
        rows = len(first.inputs)
        deadline = asyncio.get_running_loop().time() + self._max_wait
        while rows < self._max_batch:
            if not self._queue.empty():
                candidate = self._queue.get_nowait()
            else:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(remaining):
                        candidate = await self._queue.get()
                except TimeoutError:
                    break
            if rows + len(candidate.inputs) > self._max_batch:
                self._held = candidate
                break
            batch.append(candidate)
            rows += len(candidate.inputs)

    def _forward(self, requests: list[_Request]) -> list[np.ndarray]:
        """Runs on the worker thread: one pass over at most max_batch rows."""
        inputs = torch.cat([request.inputs for request in requests])
        probabilities = mas.predict_proba(
            requests[0].loaded.model, requests[0].task, inputs
        ).numpy()
        self._on_forward(len(inputs))
        bounds = np.cumsum([len(request.inputs) for request in requests])[:-1]
        return np.split(probabilities, bounds)


def _fail_unanswered(requests: list[_Request]) -> None:
    """Unavailable, like the service before its first model: a retry reaches a running instance."""
    for request in requests:
        if not request.future.done():
            request.future.set_exception(
                ServiceUnavailable(None, "the service is shutting down", retry_after=1)
            )


def _drain(queue: asyncio.Queue[_Request]) -> list[_Request]:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items
