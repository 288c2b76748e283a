import hashlib

import pytest
import torch
from torch import nn

from app.ml.serialization import load_model, sha256_hex, weights_from_bytes, weights_to_bytes
from app.ml.training import predict_batch
from app.ml.transfer import prepare_model
from tests.ml.conftest import ARCHITECTURE, blobs


def test_round_trip_gives_identical_outputs(source_model: nn.Module) -> None:
    data = weights_to_bytes(source_model)
    loaded = load_model(ARCHITECTURE, 4, 2, data)
    assert not loaded.training
    x, _ = blobs(n=10)
    assert torch.equal(
        torch.from_numpy(predict_batch(loaded, x, "classification")),
        torch.from_numpy(predict_batch(source_model, x, "classification")),
    )
    assert weights_to_bytes(loaded) == data


def test_weights_are_safetensors_not_pickle(source_model: nn.Module) -> None:
    data = weights_to_bytes(source_model)
    assert not data.startswith(b"\x80")  # pickle protocol marker
    header_size = int.from_bytes(data[:8], "little")
    assert data[8 : 8 + header_size].startswith(b"{")
    tensors = weights_from_bytes(data)
    assert set(tensors) == set(source_model.state_dict())


def test_frozen_models_serialise_too(source_model: nn.Module) -> None:
    model = prepare_model("feature", source_model, ARCHITECTURE, 4, 3, keep_head=False, seed=0)
    loaded = load_model(ARCHITECTURE, 4, 3, weights_to_bytes(model))
    assert all(
        torch.equal(a, b)
        for a, b in zip(loaded.state_dict().values(), model.state_dict().values(), strict=True)
    )


def test_loading_into_a_different_shape_fails(source_model: nn.Module) -> None:
    with pytest.raises(RuntimeError):
        load_model({**ARCHITECTURE, "hidden_layers": [8]}, 4, 2, weights_to_bytes(source_model))


def test_sha256_hex() -> None:
    assert sha256_hex(b"abc") == hashlib.sha256(b"abc").hexdigest()
    assert sha256_hex(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
