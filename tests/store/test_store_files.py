"""Atomic files, the tensor codec and model files on disk."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from mas.model import MultiHeadNet, build_model
from mas_stream.records.version import VersionManifest, VersionMetrics
from mas_stream.store.codec import decode_tensors, encode_tensors
from mas_stream.store.files import atomic_write_bytes, atomic_write_json
from mas_stream.store.model_files import (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    load_extra_tensors,
    load_model,
    save_model,
)
from tests.support.versions import version_info

SPECS: dict[str, dict[str, Any]] = {
    "mlp": {"family": "mlp", "input_shape": [12], "hidden": [16, 8], "activation": "tanh"},
    "cnn": {"family": "cnn", "input_shape": [1, 8, 8], "channels": [4], "hidden": [8]},
    "shared": {
        "family": "mlp",
        "input_shape": [6],
        "hidden": [8],
        "head_mode": "shared",
        "shared_classes": 5,
    },
}


def trained_looking_model(spec: dict[str, Any]) -> MultiHeadNet:
    """Weights unlike the seeded initialisation, so a round trip cannot pass by rebuilding them."""
    model = build_model(spec, {"first": 3, "second": 2})
    generator = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return model


def manifest_of(model: MultiHeadNet, version: int = 1) -> VersionManifest:
    return VersionManifest(
        version=version,
        parent=None,
        created_at=0.0,
        metrics=VersionMetrics(accuracy={}),
        info=version_info("second"),
        spec=model.spec,
        tasks=dict(model.tasks),
    )


def test_atomic_write_bytes_replaces_content_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "nested" / "blob.bin"
    atomic_write_bytes(target, b"first")
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert os.listdir(target.parent) == ["blob.bin"]


def test_atomic_write_json_round_trips(tmp_path: Path) -> None:
    target = tmp_path / "doc.json"
    atomic_write_json(target, {"b": [1, 2.5], "a": None})
    assert json.loads(target.read_text()) == {"a": None, "b": [1, 2.5]}


def test_failed_write_keeps_old_content_and_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "doc.json"
    atomic_write_json(target, {"ok": True})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"not serialisable": object()})
    assert json.loads(target.read_text()) == {"ok": True}
    assert os.listdir(tmp_path) == ["doc.json"]


def test_codec_round_trip_keeps_values_dtypes_and_metadata() -> None:
    tensors = {
        "weights": torch.randn(3, 4).t(),  # not contiguous
        "counts": torch.tensor([1, 2, 3], dtype=torch.int64),
        "half": torch.randn(2, dtype=torch.float16),
    }
    decoded, metadata = decode_tensors(encode_tensors(tensors, {"version": "7"}))
    assert metadata == {"version": "7"}
    assert decoded.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert decoded[name].dtype == tensor.dtype
        assert torch.equal(decoded[name], tensor)


def test_codec_without_metadata() -> None:
    decoded, metadata = decode_tensors(encode_tensors({"a": torch.zeros(2)}))
    assert metadata == {}
    assert torch.equal(decoded["a"], torch.zeros(2))


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_model_round_trip_is_bit_exact(tmp_path: Path, kind: str) -> None:
    model = trained_looking_model(SPECS[kind])
    written = manifest_of(model, version=3)
    save_model(model, tmp_path, written)
    loaded, manifest = load_model(tmp_path)

    assert manifest == written
    assert manifest.version == 3
    assert manifest.tasks == {"first": 3, "second": 2}
    assert list(loaded.tasks) == ["first", "second"]
    assert not loaded.training
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    for name, tensor in original.items():
        assert restored[name].dtype == tensor.dtype
        assert torch.equal(restored[name], tensor), name
    inputs = torch.randn(4, *SPECS[kind]["input_shape"])
    model.eval()
    for task in model.tasks:
        assert torch.equal(loaded(inputs, task), model(inputs, task))


def test_files_are_safetensors_and_json_only(tmp_path: Path) -> None:
    model = trained_looking_model(SPECS["mlp"])
    save_model(model, tmp_path, manifest_of(model), {"omega": {"w": torch.ones(2)}})
    assert sorted(os.listdir(tmp_path)) == [MANIFEST_FILE, WEIGHTS_FILE, "omega.safetensors"]
    for name in (WEIGHTS_FILE, "omega.safetensors"):
        decode_tensors((tmp_path / name).read_bytes())  # parses as safetensors


def test_extra_tensors_round_trip_and_absent_is_none(tmp_path: Path) -> None:
    omega = {"trunk.1.weight": torch.rand(16, 12), "trunk.1.bias": torch.rand(16)}
    model = trained_looking_model(SPECS["mlp"])
    save_model(model, tmp_path, manifest_of(model), {"omega_consolidated": omega})
    loaded = load_extra_tensors(tmp_path, "omega_consolidated")
    assert loaded is not None
    assert all(torch.equal(loaded[name], omega[name]) for name in omega)
    assert load_extra_tensors(tmp_path, "omega_boundary") is None


@pytest.mark.parametrize("name", ["model", "../escape", "a/b", ""])
def test_extra_tensor_names_cannot_escape_or_replace_weights(tmp_path: Path, name: str) -> None:
    model = trained_looking_model(SPECS["mlp"])
    with pytest.raises(ValueError, match="invalid extra tensor set name"):
        save_model(model, tmp_path, manifest_of(model), {name: {"x": torch.ones(1)}})
    assert os.listdir(tmp_path) == []
