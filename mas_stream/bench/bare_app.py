"""The serving benchmark's baseline: the smallest FastAPI + torch app that serves the same MLP.

`python -m mas_stream.bench.bare_app --weights W --port P`: one uvicorn process, one worker, one
torch thread, the forward pass in the threadpool, as a hand-written inference app would do it.
It is what the service's figures are compared with, so it holds nothing the service could drop.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel
from torch import nn

import mas


class Rows(BaseModel):
    inputs: list[list[float]]


class Predictions(BaseModel):
    predictions: list[int]


def bare_weights(model: mas.MultiHeadNet, task: str) -> dict[str, torch.Tensor]:
    """The trunk's linear layers, then the task's head, as `bare_mlp` names them."""
    linears = [layer for layer in model.trunk.modules() if isinstance(layer, nn.Linear)]
    head = model.heads[model.head_name(task)]
    assert isinstance(head, nn.Linear)
    linears.append(head)
    weights: dict[str, torch.Tensor] = {}
    for index, layer in enumerate(linears):
        weights[f"{2 * index}.weight"] = layer.weight.detach().clone()
        weights[f"{2 * index}.bias"] = layer.bias.detach().clone()
    return weights


def bare_mlp(weights: dict[str, torch.Tensor]) -> nn.Sequential:
    """Linear, ReLU, ..., Linear, sized from the weights themselves."""
    count = len(weights) // 2
    layers: list[nn.Module] = []
    for index in range(count):
        out_features, in_features = weights[f"{2 * index}.weight"].shape
        layers.append(nn.Linear(in_features, out_features))
        if index < count - 1:
            layers.append(nn.ReLU())
    mlp = nn.Sequential(*layers)
    mlp.load_state_dict(weights)
    return mlp.eval()


def create_bare_app(weights_path: Path) -> FastAPI:
    torch.set_num_threads(1)
    weights = torch.load(weights_path, weights_only=True)
    mlp, width = bare_mlp(weights), int(weights["0.weight"].shape[1])

    def forward(inputs: torch.Tensor) -> list[int]:
        with torch.inference_mode():
            return mlp(inputs).argmax(dim=1).tolist()

    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/predict")
    async def predict(body: Rows) -> Predictions:
        inputs = torch.tensor(body.inputs, dtype=torch.float32)
        return Predictions(predictions=await run_in_threadpool(forward, inputs))

    @app.post("/predict-bytes")
    async def predict_bytes(request: Request) -> Predictions:
        values = np.frombuffer(await request.body(), dtype="<f4").reshape(-1, width)
        inputs = torch.from_numpy(values.copy())
        return Predictions(predictions=await run_in_threadpool(forward, inputs))

    return app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mas_stream.bench.bare_app")
    parser.add_argument("--weights", type=Path, required=True, help="torch.save of bare_weights")
    parser.add_argument("--host", default="127.0.0.1", help="listen address")
    parser.add_argument("--port", type=int, required=True, help="listen port")
    args = parser.parse_args(argv)
    uvicorn.run(
        create_bare_app(args.weights),
        host=args.host,
        port=args.port,
        workers=1,
        log_level="warning",
        access_log=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
