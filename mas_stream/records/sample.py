"""One sample-stream entry: the rows one model version served for one task.

On the wire an entry has the fields `v` (model version), `t` (task), `s` (shape "n,d1,d2") and
`x` (raw little-endian float32).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from redis.typing import EncodableT, FieldT

_FIELDS: Final = (b"v", b"t", b"s", b"x")
_FLOAT32_LE: Final = np.dtype("<f4")


class CorruptSample(ValueError):
    """A stream entry that cannot be decoded into finite float32 rows; it goes to dead letters."""


@dataclass(frozen=True)
class Sample:
    """`rows` is [n, ...] with n >= 1; it is stored as contiguous little-endian float32."""

    version: int
    task: str
    rows: np.ndarray

    def __post_init__(self) -> None:
        rows = np.ascontiguousarray(self.rows, dtype=_FLOAT32_LE)
        if rows.ndim < 2 or rows.shape[0] == 0:
            raise ValueError(f"rows must be [n, ...] with n >= 1, got shape {list(rows.shape)}")
        object.__setattr__(self, "rows", rows)

    @property
    def inputs(self) -> torch.Tensor:
        return torch.from_numpy(self.rows.astype(np.float32, copy=False))

    def to_fields(self) -> dict[FieldT, EncodableT]:
        shape = ",".join(map(str, self.rows.shape))
        return {"v": self.version, "t": self.task, "s": shape, "x": self.rows.tobytes()}

    @classmethod
    def from_fields(cls, fields: Mapping[bytes, bytes]) -> Sample:
        """Checks everything a worker relies on, including finiteness: one NaN would poison Ω."""
        missing = [name.decode() for name in _FIELDS if name not in fields]
        if len(missing) == len(_FIELDS):
            raise CorruptSample(
                "entry has no fields: it was trimmed from the stream before processing"
            )
        if missing:
            raise CorruptSample(f"missing fields {missing}")
        try:
            version = int(fields[b"v"])
            task = fields[b"t"].decode("utf-8")
            shape = [int(d) for d in fields[b"s"].split(b",")]
        except (ValueError, UnicodeDecodeError) as exc:
            raise CorruptSample(f"unparsable header field: {exc}") from exc
        if version < 0 or not task:
            raise CorruptSample(f"bad version {version} or empty task")
        if len(shape) < 2 or any(d < 1 for d in shape):
            raise CorruptSample(f"shape {shape} is not [n, ...] with positive sizes")
        data = fields[b"x"]
        expected = math.prod(shape) * _FLOAT32_LE.itemsize
        if len(data) != expected:
            raise CorruptSample(f"{len(data)} data bytes, shape {shape} needs {expected}")
        rows = np.frombuffer(data, dtype=_FLOAT32_LE).astype(np.float32).reshape(shape)
        if not np.isfinite(rows).all():
            raise CorruptSample("inputs contain NaN or infinity")
        return cls(version, task, rows)


@dataclass(frozen=True)
class StreamEntry:
    """An entry as Redis delivered it; `deliveries` counts this delivery too (None: unknown)."""

    entry_id: str
    fields: dict[bytes, bytes]
    deliveries: int | None

    def sample(self) -> Sample:
        return Sample.from_fields(self.fields)


class StreamStats(BaseModel):
    """`pending`: delivered, not yet acknowledged; `lag`: not yet delivered (None: unknown)."""

    model_config = ConfigDict(frozen=True)

    length: int
    pending: int
    lag: int | None


@dataclass(frozen=True)
class StreamMemory:
    """`redis_bytes`: Redis's used_memory, all keys; `stream_bytes`: the sample stream's share
    (MEMORY USAGE, sampled)."""

    redis_bytes: int
    stream_bytes: int
