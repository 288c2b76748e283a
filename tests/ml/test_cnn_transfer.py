"""The existing strategies and serialization applied to the CNN: trunk = convolutions + dense."""

from typing import Any

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from app.ml.architectures import CNN, build_model
from app.ml.images import fit_image_scaling, transform_images
from app.ml.serialization import load_model, weights_to_bytes
from app.ml.training import evaluate, predict_batch
from app.ml.transfer import prepare_model
from app.ml.transfer._models import trainable_parameter_names
from tests.ml.conftest import train

ARCHITECTURE: dict[str, Any] = {
    "type": "cnn",
    "input_shape": [1, 8, 8],
    "channels": [4, 8],
    "hidden_layers": [16],
}
SOURCE_CLASSES = {"task": "classification", "classes": [0, 1, 2, 3, 4]}
TARGET_CLASSES = {"task": "classification", "classes": list(range(10))}


def digits(low: int, high: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    bunch = load_digits()
    keep = (bunch.target >= low) & (bunch.target < high)
    return bunch.images[keep][:rows], bunch.target[keep][:rows]


@pytest.fixture(scope="module")
def scaling() -> dict[str, Any]:
    return fit_image_scaling(digits(0, 5, 300)[0])


@pytest.fixture
def source_cnn(scaling: dict[str, Any]) -> CNN:
    images, labels = digits(0, 5, 300)
    model = build_model(ARCHITECTURE, 64, 5)
    assert isinstance(model, CNN)
    train(model, transform_images(scaling, images), labels, target_spec=SOURCE_CLASSES, epochs=4)
    return model


def params(model: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith(prefix)}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_source_cnn_learns_digits(source_cnn: CNN, scaling: dict[str, Any]) -> None:
    images, labels = digits(0, 5, 500)
    scores = evaluate(
        source_cnn, transform_images(scaling, images[300:]), labels[300:], SOURCE_CLASSES
    )
    assert scores["accuracy"] > 0.8


def test_feature_transfer_freezes_convolutions_and_dense_layers(
    source_cnn: CNN, scaling: dict[str, Any]
) -> None:
    before = params(source_cnn, "trunk.")
    assert any(name.startswith("trunk.1.") for name in before)  # the first convolution
    model = prepare_model("feature", source_cnn, ARCHITECTURE, 64, 10, keep_head=False, seed=0)
    assert trainable_parameter_names(model) == ["head.weight", "head.bias"]
    images, labels = digits(5, 10, 100)
    train(model, transform_images(scaling, images), labels, target_spec=TARGET_CLASSES, epochs=2)
    assert same(params(model, "trunk."), before)
    assert model.head.out_features == 10


def test_parameter_transfer_starts_from_the_source_and_trains_everything(
    source_cnn: CNN, scaling: dict[str, Any]
) -> None:
    before = params(source_cnn, "trunk.")
    model = prepare_model("parameter", source_cnn, ARCHITECTURE, 64, 10, keep_head=False, seed=0)
    assert same(params(model, "trunk."), before)
    assert len(trainable_parameter_names(model)) == len(list(model.parameters()))
    images, labels = digits(5, 10, 100)
    train(model, transform_images(scaling, images), labels, target_spec=TARGET_CLASSES, epochs=2)
    after = params(model, "trunk.")
    assert not any(torch.equal(after[k], before[k]) for k in before)
    assert same(params(source_cnn, "trunk."), before)  # the source is left alone


def test_parameter_transfer_can_keep_the_source_head(source_cnn: CNN) -> None:
    model = prepare_model("parameter", source_cnn, ARCHITECTURE, 64, 5, keep_head=True, seed=0)
    assert same(params(model, "head."), params(source_cnn, "head."))


def test_structure_transfer_reuses_only_the_architecture(source_cnn: CNN) -> None:
    model = prepare_model("structure", source_cnn, ARCHITECTURE, 64, 10, keep_head=False, seed=0)
    assert isinstance(model, CNN)
    source = params(source_cnn, "trunk.")
    fresh = params(model, "trunk.")
    assert source.keys() == fresh.keys()
    assert not any(torch.equal(source[k], fresh[k]) for k in source)


def test_a_cnn_cannot_be_transferred_to_images_of_another_size(source_cnn: CNN) -> None:
    with pytest.raises(ValueError, match="reads 64 features but the target has 100"):
        prepare_model("parameter", source_cnn, ARCHITECTURE, 100, 5, keep_head=True, seed=0)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_serialization_round_trip(batch_norm: bool, scaling: dict[str, Any]) -> None:
    architecture = {**ARCHITECTURE, "batch_norm": batch_norm}
    model = build_model(architecture, 64, 5)
    images, labels = digits(0, 5, 60)
    x = transform_images(scaling, images)
    train(model, x, labels, target_spec=SOURCE_CLASSES, epochs=1)
    data = weights_to_bytes(model)
    # As stored on a version: the request's fields plus input_dim, output_dim and input_shape.
    stored = {**architecture, "input_dim": 64, "output_dim": 5, "extra": "ignored"}
    loaded = load_model(stored, 64, 5, data)
    assert isinstance(loaded, CNN)
    assert np.array_equal(
        predict_batch(loaded, x, "classification"), predict_batch(model, x, "classification")
    )
    assert weights_to_bytes(loaded) == data
