"""Typed records that cross process boundaries (Redis hashes, files on disk, HTTP bodies), each
with its one codec, so no caller reads them by string key."""

from __future__ import annotations

from typing import Annotated, TypeVar

from pydantic import Field

_Value = TypeVar("_Value")


def _is_none(value: object) -> bool:
    return value is None


# A field that some records never had: None is left out of their JSON instead of written as null,
# so a record dumps as the same JSON it was read from.
Omittable = Annotated[_Value | None, Field(exclude_if=_is_none)]
