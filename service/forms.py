"""Multipart forms that routes read themselves (task uploads, weight imports): one parser, so
bad framing and unknown fields get the same 422 naming the field on every such route."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping

from fastapi import Request
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException

from mas.data import DataValidationError
from service.errors import ApiError


def media_type(request: Request) -> str:
    """The Content-Type without its parameters (boundary, charset), lower case."""
    return request.headers.get("content-type", "").partition(";")[0].strip().lower()


@contextlib.asynccontextmanager
async def parsed_form(
    request: Request, fields: frozenset[str], *, max_files: int, files_field: str
) -> AsyncIterator[FormData]:
    """Starlette answers bad framing (no boundary, too many parts) with a 400 naming no field;
    here it is the 422 of the body, or of `files_field` when there are too many files. A field
    not in `fields` is refused by name."""
    try:
        form = await request.form(max_files=max_files, max_fields=len(fields))
    except HTTPException as error:
        if error.status_code != 400:  # 413 stays 413
            raise
        field = files_field if "Too many files" in str(error.detail) else "body"
        raise ApiError(422, field, f"is not valid multipart/form-data: {error.detail}") from None
    try:
        unknown = sorted(set(form.keys()) - fields)
        if unknown:
            raise ApiError(
                422, unknown[0], f"unknown form field; expected some of {sorted(fields)}"
            )
        yield form
    finally:
        await form.close()


@contextlib.contextmanager
def fields_named(mapping: Mapping[str, str]) -> Iterator[None]:
    """Re-raise the core's data errors under the name the client used for the field."""
    try:
        yield
    except DataValidationError as error:
        raise DataValidationError(mapping.get(error.field, error.field), error.problem) from None
