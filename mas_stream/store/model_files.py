"""A model version on disk: weights in safetensors, architecture in a JSON manifest, no pickle.

The manifest's `spec` and `tasks` are enough for `build_model` to rebuild the exact module tree;
the weights then load strictly, so any mismatch between the two fails loudly.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor

from mas.model import MultiHeadNet, build_model
from mas_stream.records.version import VersionManifest
from mas_stream.store.codec import decode_tensors, encode_tensors
from mas_stream.store.files import atomic_write_bytes, atomic_write_json

WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"
_EXTRA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def save_model(
    model: MultiHeadNet,
    directory: Path,
    manifest: VersionManifest,
    extra_tensors: dict[str, dict[str, Tensor]] | None = None,
) -> None:
    """Writes the manifest last, so a directory with a manifest is complete."""
    directory = Path(directory)
    for name in extra_tensors or {}:
        _extra_path(directory, name)
    atomic_write_bytes(directory / WEIGHTS_FILE, encode_tensors(model.state_dict()))
    for name, tensors in (extra_tensors or {}).items():
        atomic_write_bytes(_extra_path(directory, name), encode_tensors(tensors))
    atomic_write_json(directory / MANIFEST_FILE, manifest.to_json())


def read_manifest(directory: Path) -> VersionManifest:
    return VersionManifest.from_json((Path(directory) / MANIFEST_FILE).read_bytes())


def load_model(
    directory: Path, device: str | torch.device = "cpu"
) -> tuple[MultiHeadNet, VersionManifest]:
    """The model in eval mode on `device`, and its manifest."""
    manifest = read_manifest(directory)
    model = build_model(manifest.spec, manifest.tasks)
    weights, _ = decode_tensors((Path(directory) / WEIGHTS_FILE).read_bytes())
    model.load_state_dict(weights, strict=True)
    return model.to(device).eval(), manifest


def load_extra_tensors(directory: Path, name: str) -> dict[str, Tensor] | None:
    """None when the version was saved without tensors of that name."""
    path = _extra_path(Path(directory), name)
    if not path.exists():
        return None
    tensors, _ = decode_tensors(path.read_bytes())
    return tensors


def _extra_path(directory: Path, name: str) -> Path:
    """Names become file names beside the weights, so they may not escape or replace them."""
    if not _EXTRA_NAME.match(name) or name == Path(WEIGHTS_FILE).stem:
        raise ValueError(f"invalid extra tensor set name {name!r}")
    return directory / f"{name}.safetensors"
