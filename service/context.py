"""What a request handler is given: the app's `Runtime` (built by `service.app` from the settings,
torn down with it), through `get_runtime` or the `RuntimeDep` dependency.

The runtime holds the route modules' own objects (`Inference`, `TaskIntake`), and the routes import
this module, so it names its fields' types for type checking only: importing it imports no route.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

if TYPE_CHECKING:
    from mas_stream.settings import Settings
    from mas_stream.store.datasets import DatasetStore
    from mas_stream.store.jobs import JobQueue
    from mas_stream.store.redis_server import RedisClient
    from mas_stream.store.registry import ModelRegistry, ServedModel
    from mas_stream.store.traffic import OmegaStore
    from service.forwarder import SampleForwarder
    from service.omega_summary import OmegaSummary
    from service.routes.predict import Inference, MicroBatcher
    from service.routes.tasks import TaskIntake


@dataclass
class Runtime:
    settings: Settings
    quick_redis: RedisClient
    redis: RedisClient
    registry: ModelRegistry
    jobs: JobQueue
    datasets: DatasetStore
    omega: OmegaStore
    served: ServedModel
    forwarder: SampleForwarder
    batcher: MicroBatcher
    inference: Inference
    intake: TaskIntake
    importance: OmegaSummary

    def start(self) -> None:
        """Needs the running event loop (the batcher's collector lives on it)."""
        self.served.start()
        self.forwarder.start()
        self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()
        self.forwarder.stop()
        self.served.stop()
        self.redis.close()
        self.quick_redis.close()


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
