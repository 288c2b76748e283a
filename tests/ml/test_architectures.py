import pytest
import torch
from torch import nn

from app.ml.architectures import ACTIVATIONS, MLP, build_model, new_head


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
