"""Stored bytes to values and back; tensors via safetensors, never pickle, so blobs are safe."""

from __future__ import annotations

import json
import struct

from safetensors.torch import load, save
from torch import Tensor

_HEADER_LENGTH_BYTES = 8


def encode_tensors(tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """safetensors needs dense CPU storage; copies only tensors that are not already so."""
    prepared = {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}
    return save(prepared, metadata=metadata)


def decode_tensors(blob: bytes) -> tuple[dict[str, Tensor], dict[str, str]]:
    return load(blob), read_metadata(blob)


def read_metadata(blob: bytes) -> dict[str, str]:
    """`safetensors.torch.load` drops the header metadata, so it is read from the header itself."""
    (header_length,) = struct.unpack("<Q", blob[:_HEADER_LENGTH_BYTES])
    header = json.loads(blob[_HEADER_LENGTH_BYTES : _HEADER_LENGTH_BYTES + header_length])
    return dict(header.get("__metadata__") or {})


# redis-py types its replies as the union of every command's; these name what a stream read
# returns on this project's (undecoded) clients.
StreamEntries = list[tuple[bytes, dict[bytes, bytes]]]
StreamReply = list[tuple[bytes, StreamEntries]]


def as_text(value: bytes | str) -> str:
    """Redis replies are bytes unless the client decodes them; accept either."""
    return value.decode("utf-8") if isinstance(value, bytes) else value
