import pytest
import torch
from torch import nn

from app.ml.architectures import MLP, build_model
from app.ml.transfer import prepare_model, registry
from app.ml.transfer._models import trainable_parameter_names
from tests.ml.conftest import ARCHITECTURE, blobs, train

HEAD = ["head.weight", "head.bias"]


def trunk_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("trunk.")}


def head_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("head.")}


def all_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def none_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and not any(torch.equal(a[k], b[k]) for k in a)


def prepare(strategy: str, source: nn.Module, *, keep_head: bool = False) -> nn.Module:
    return prepare_model(strategy, source, ARCHITECTURE, 4, 2, keep_head=keep_head, seed=3)


def test_strategies_are_registered_by_name() -> None:
    assert set(registry.names()) == {
        "parameter",
        "feature",
        "structure",
        "lp_ft",
        "l2_sp",
        "joint",
        "scratch",
        "linear",
        "forest",
    }
    with pytest.raises(ValueError, match="unknown strategy"):
        prepare("lora", nn.Linear(4, 2))


def test_feature_strategy_trains_only_a_new_head(source_model: nn.Module) -> None:
    source_trunk = trunk_params(source_model)
    model = prepare("feature", source_model, keep_head=True)
    assert trainable_parameter_names(model) == HEAD
    assert none_equal(head_params(model), head_params(source_model))  # always a fresh head
    head_before = head_params(model)

    train(model, *blobs(seed=1), epochs=3)

    assert all_equal(trunk_params(model), source_trunk)
    assert none_equal(head_params(model), head_before)
    assert all_equal(trunk_params(source_model), source_trunk)  # the source is never touched


def test_feature_strategy_keeps_a_frozen_trunk_in_eval_mode() -> None:
    source = build_model({**ARCHITECTURE, "dropout": 0.5}, 4, 2)
    model = prepare("feature", source)
    assert isinstance(model, MLP)
    modes: list[tuple[bool, bool]] = []
    model.trunk.register_forward_hook(
        lambda m, i, o: modes.append((m.training, model.head.training))
    )
    train(model, *blobs(n=16), epochs=1)
    assert modes and modes[0] == (False, True)


def test_parameter_strategy_fine_tunes_everything(source_model: nn.Module) -> None:
    source_trunk = trunk_params(source_model)
    model = prepare("parameter", source_model, keep_head=True)
    assert trainable_parameter_names(model) == [n for n, _ in model.named_parameters()]
    assert all_equal(head_params(model), head_params(source_model))
    assert all_equal(trunk_params(model), source_trunk)

    train(model, *blobs(seed=1), epochs=3)

    assert none_equal(trunk_params(model), source_trunk)


def test_parameter_strategy_replaces_the_head_unless_kept(source_model: nn.Module) -> None:
    model = prepare_model("parameter", source_model, ARCHITECTURE, 4, 3, keep_head=False, seed=3)
    assert isinstance(model, MLP)
    assert model.head.out_features == 3
    assert all_equal(trunk_params(model), trunk_params(source_model))
    with pytest.raises(ValueError, match="cannot keep a head"):
        prepare_model("parameter", source_model, ARCHITECTURE, 4, 3, keep_head=True, seed=3)


def test_structure_strategy_reinitialises_the_same_architecture(source_model: nn.Module) -> None:
    model = prepare("structure", source_model)
    source = dict(source_model.named_parameters())
    params = dict(model.named_parameters())
    assert {n: p.shape for n, p in params.items()} == {n: p.shape for n, p in source.items()}
    assert [type(m) for m in model.modules()] == [type(m) for m in source_model.modules()]
    assert not any(torch.equal(params[n], source[n]) for n in params)
    assert trainable_parameter_names(model) == list(params)


def test_new_parameters_depend_only_on_the_seed(source_model: nn.Module) -> None:
    first = prepare("structure", source_model)
    torch.rand(10)  # moving the global generator must not matter
    second = prepare("structure", source_model)
    other = prepare_model("structure", source_model, ARCHITECTURE, 4, 2, keep_head=False, seed=4)
    assert all_equal(dict(first.named_parameters()), dict(second.named_parameters()))
    assert not all_equal(dict(first.named_parameters()), dict(other.named_parameters()))


def test_input_width_mismatch_is_rejected(source_model: nn.Module) -> None:
    with pytest.raises(ValueError, match="reads 4 features but the target has 5"):
        prepare_model("feature", source_model, ARCHITECTURE, 5, 2, keep_head=False, seed=0)
