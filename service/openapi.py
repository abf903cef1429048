"""/openapi.json as the server behaves: every status, the security it enforces, the rows it takes.

FastAPI's document is completed once: the bodies routes parse themselves are added, each bearer
scheme is kept only while its token is set (a route whose token is unset is open), the operations
a scheme guards get its 401 and 403, and every operation the 413 of the app-wide body limit. What
depends on the served model (the row width, the task names) is filled in per request, so a
client generating requests from the document sends rows the model takes.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from mas.limits import FLOAT32_MAX
from mas_stream.settings import Settings
from service.auth import TOKEN_SETTINGS
from service.responses import HAND_PARSED_BODIES, errors, oip_errors

Schema = dict[str, Any]
FASTAPI_422 = "HTTPValidationError"
NUMBER: Schema = {"type": "number", "minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX}
# Where rows of model inputs are, by component: the JSON task upload and /v1/predict.
ROWS_AT = (("TaskUpload", "inputs"), ("PredictRequest", "inputs"))


def document(app: FastAPI, settings: Settings) -> Callable[[], Schema]:
    """The replacement of `app.openapi`."""
    generate = app.openapi

    def openapi() -> Schema:
        if app.openapi_schema is None:
            app.openapi_schema = _completed(generate(), settings)
        served = getattr(app.state, "runtime", None)
        loaded = served.served.current if served is not None else None
        if loaded is None:
            return app.openapi_schema
        return _with_model(
            app.openapi_schema, settings, loaded.model.input_shape, list(loaded.model.tasks)
        )

    return openapi


def _completed(schema: Schema, settings: Settings) -> Schema:
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in HAND_PARSED_BODIES.values():
        _add_component(schemas, model)
    _keep_configured_security(schema, settings)
    for path, operation in _operations(schema):
        declared = oip_errors if path.startswith("/v2") else errors
        responses = operation["responses"]
        if FASTAPI_422 in json.dumps(responses.get("422", {})):
            # FastAPI's own, whose body the error handlers never send.
            responses["422"] = _described(schema, declared(422)[422])
        statuses = [413, *([401, 403] if operation.get("security") else [])]
        for status, response in declared(*statuses).items():
            responses.setdefault(str(status), _described(schema, response))
    for unused in (FASTAPI_422, "ValidationError"):
        schemas.pop(unused, None)
    _set_rows(schemas, settings, None)
    return schema


def _keep_configured_security(schema: Schema, settings: Settings) -> None:
    components = schema["components"]
    schemes = components.get("securitySchemes", {})
    for name in [name for name in schemes if not getattr(settings, TOKEN_SETTINGS[name])]:
        del schemes[name]
    if not schemes:
        components.pop("securitySchemes", None)
    for _, operation in _operations(schema):
        kept = [r for r in operation.get("security", []) if set(r) <= set(schemes)]
        if kept:
            operation["security"] = kept
        else:
            operation.pop("security", None)


def _operations(schema: Schema) -> list[tuple[str, Schema]]:
    return [(path, op) for path, ops in schema["paths"].items() for op in ops.values()]


def _described(schema: Schema, response: dict[str, Any]) -> Schema:
    """A `responses=` entry as FastAPI writes it into the document."""
    model: type[BaseModel] = response["model"]
    _add_component(schema["components"]["schemas"], model)
    reference = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {
        "description": response["description"],
        "content": {"application/json": {"schema": reference}},
    }


def _add_component(schemas: Schema, model: type[BaseModel]) -> None:
    definition = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(definition.pop("$defs", {}))
    schemas[model.__name__] = definition


def _with_model(
    base: Schema, settings: Settings, input_shape: Sequence[int], tasks: list[str]
) -> Schema:
    schema = copy.deepcopy(base)
    schemas = schema["components"]["schemas"]
    _set_rows(schemas, settings, input_shape)
    if tasks:
        task_name = {"enum": tasks, "description": "A task the served version has learned."}
        schemas["PredictRequest"]["properties"]["task"] = {"anyOf": [task_name, {"type": "null"}]}
        parameters = schemas["InferRequest"]["properties"]["parameters"]
        parameters["anyOf"][0]["properties"] = {"task": task_name}
    return schema


def _set_rows(schemas: Schema, settings: Settings, input_shape: Sequence[int] | None) -> None:
    for component, field in ROWS_AT:
        rows: Schema = {"type": "array", "minItems": 1, "items": _row(input_shape)}
        if component == "PredictRequest":
            rows["maxItems"] = settings.max_rows
        described = schemas[component]["properties"][field].get("description")
        schemas[component]["properties"][field] = {**rows, "description": described}


def _row(input_shape: Sequence[int] | None) -> Schema:
    """A row: flat, or nested to the input shape (the served model's; unknown before one)."""
    if input_shape is None:
        return {"type": "array", "minItems": 1, "items": NUMBER}
    size = math.prod(input_shape)
    flat = {"type": "array", "minItems": size, "maxItems": size, "items": NUMBER}
    if len(input_shape) == 1:
        return flat
    return {"anyOf": [flat, _nested(input_shape)]}


def _nested(shape: Sequence[int]) -> Schema:
    if not shape:
        return NUMBER
    inner = _nested(shape[1:])
    return {"type": "array", "minItems": shape[0], "maxItems": shape[0], "items": inner}
