import math

import pytest
import torch
from torch import nn

from app.ml.architectures import (
    ACTIVATIONS,
    CNN,
    MLP,
    build_model,
    cnn_feature_shape,
    new_head,
)


def test_mlp_layers_follow_the_architecture() -> None:
    model = build_model(
        {"type": "mlp", "hidden_layers": [5, 3], "dropout": 0.2, "activation": "gelu", "x": 1},
        input_dim=4,
        output_dim=2,
    )
    assert isinstance(model, MLP)
    assert [type(m) for m in model.trunk] == [nn.Linear, nn.GELU, nn.Dropout] * 2
    assert [m.p for m in model.trunk if isinstance(m, nn.Dropout)] == [0.2, 0.2]
    assert model.trunk[0].in_features == 4
    assert (model.head.in_features, model.head.out_features) == (3, 2)
    assert model.feature_dim == 3
    assert model(torch.zeros(7, 4)).shape == (7, 2)


def test_mlp_without_hidden_layers_is_a_linear_model() -> None:
    model = build_model({"type": "mlp", "hidden_layers": []}, input_dim=4, output_dim=1)
    assert isinstance(model, MLP)
    assert len(model.trunk) == 0
    assert model.feature_dim == 4


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_every_activation_builds(activation: str) -> None:
    model = build_model({"type": "mlp", "hidden_layers": [2], "activation": activation}, 3, 2)
    assert isinstance(model, MLP)
    assert isinstance(model.trunk[1], ACTIVATIONS[activation])


@pytest.mark.parametrize(
    "architecture",
    [
        {"type": "cnn", "hidden_layers": [2]},
        {"hidden_layers": [2]},
        {"type": "mlp", "hidden_layers": [2], "activation": "swish"},
        {"type": "mlp", "hidden_layers": [0]},
        {"type": "mlp", "hidden_layers": [2], "dropout": 1.0},
        {"type": "mlp"},
    ],
)
def test_bad_architectures_are_value_errors(architecture: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        build_model(architecture, 3, 2)


def test_new_head_reads_the_same_features() -> None:
    model = build_model({"type": "mlp", "hidden_layers": [6]}, 3, 2)
    head = new_head(model, 5)
    assert (head.in_features, head.out_features) == (6, 5)
    assert head is not model.head


CNN_ARCHITECTURE = {
    "type": "cnn",
    "input_shape": [2, 8, 6],
    "channels": [4, 5],
    "kernel_size": 3,
    "hidden_layers": [7],
}


class TestCNN:
    def test_layers_and_shapes_follow_the_architecture(self) -> None:
        model = build_model(CNN_ARCHITECTURE, input_dim=96, output_dim=3)
        assert isinstance(model, CNN)
        convs = [m for m in model.trunk if isinstance(m, nn.Conv2d)]
        assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
            (2, 4, (3, 3)),
            (4, 5, (3, 3)),
        ]
        assert sum(isinstance(m, nn.MaxPool2d) for m in model.trunk) == 2
        dense = [m for m in model.trunk if isinstance(m, nn.Linear)]
        # Two poolings take 8x6 to 2x1, so the first dense layer reads 5 * 2 * 1 features.
        assert [(d.in_features, d.out_features) for d in dense] == [(10, 7)]
        assert (model.head.in_features, model.head.out_features) == (7, 3)
        assert model.feature_dim == 7
        assert model.input_dim == 96

    def test_reads_flat_rows_and_image_tensors_alike(self) -> None:
        model = build_model(CNN_ARCHITECTURE, input_dim=96, output_dim=3).eval()
        images = torch.randn(4, 2, 8, 6)
        assert model(images.reshape(4, -1)).shape == (4, 3)
        assert torch.equal(model(images.reshape(4, -1)), model(images))

    def test_trunk_holds_every_layer_but_the_head(self) -> None:
        model = build_model(CNN_ARCHITECTURE, input_dim=96, output_dim=3)
        names = [name for name, _ in model.named_parameters()]
        assert names[-2:] == ["head.weight", "head.bias"]
        assert all(name.startswith("trunk.") for name in names[:-2])
        assert len(names) == 8  # two convolutions, one dense layer, the head
        features = model.trunk(torch.randn(4, 96))
        assert features.shape == (4, model.feature_dim)

    def test_without_hidden_layers_the_head_reads_the_pooled_maps(self) -> None:
        model = build_model({**CNN_ARCHITECTURE, "hidden_layers": []}, 96, 3)
        assert model.head.in_features == 10

    def test_batch_norm_is_optional(self) -> None:
        model = build_model({**CNN_ARCHITECTURE, "batch_norm": True}, 96, 3)
        assert sum(isinstance(m, nn.BatchNorm2d) for m in model.trunk) == 2
        plain = build_model(CNN_ARCHITECTURE, 96, 3)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.trunk)

    @pytest.mark.parametrize(
        ("changes", "message"),
        [
            ({"channels": [4, 4, 4]}, r"8x6 images are too small for 3 .* leaving 1x0; .* 2"),
            ({"channels": []}, "non-empty"),
            ({"channels": [4, 0]}, "positive"),
            ({"input_shape": [2, 8]}, r"\[channels, height, width\]"),
            ({"kernel_size": 0}, "kernel_size"),
            ({"dropout": 1.0}, "dropout"),
            ({"activation": "swish"}, "unknown activation"),
            ({"input_shape": [1, 1024, 1024], "channels": [8]}, "more than 65536"),
        ],
    )
    def test_invalid_architectures(self, changes: dict, message: str) -> None:
        architecture = {**CNN_ARCHITECTURE, **changes}
        input_dim = math.prod(architecture["input_shape"])
        with pytest.raises(ValueError, match=message):
            build_model(architecture, input_dim, 3)

    def test_input_dim_must_match_the_shape(self) -> None:
        with pytest.raises(ValueError, match="does not match input_shape"):
            build_model(CNN_ARCHITECTURE, input_dim=95, output_dim=3)

    def test_cnn_feature_shape(self) -> None:
        assert cnn_feature_shape([1, 8, 8], [16, 32]) == [32, 2, 2]
        assert cnn_feature_shape([3, 9, 5], [4]) == [4, 4, 2]

    def test_new_head_reads_the_trunk_features(self) -> None:
        model = build_model(CNN_ARCHITECTURE, input_dim=96, output_dim=3)
        head = new_head(model, 9)
        assert (head.in_features, head.out_features) == (7, 9)
