import numpy as np
import pytest
import torch

from app.ml.architectures import build_model
from app.ml.errors import DataError
from app.ml.training import EpochMetrics, predict_batch, split_indices
from app.ml.transfer import prepare_model
from tests.ml.conftest import ARCHITECTURE, REGRESSION, blobs, linear, train


def test_two_layer_model_overfits_a_separable_problem() -> None:
    model = build_model({"type": "mlp", "hidden_layers": [16]}, 4, 2)
    result = train(model, *blobs(n=32), epochs=30)
    train_metrics = result.metrics["train"]
    assert train_metrics["accuracy"] == 1.0
    assert train_metrics["f1_macro"] == 1.0
    assert result.metrics["validation"] is None
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_regression_learns_a_linear_target_on_the_original_scale() -> None:
    x, y = linear()
    spec = {"task": "regression", "mean": 100.0, "std": 10.0}
    model = build_model({"type": "mlp", "hidden_layers": [16]}, 4, 1)
    result = train(model, x[:96], y[:96], target_spec=spec, validation=(x[96:], y[96:]), epochs=60)
    validation = result.metrics["validation"]
    assert validation["r2"] > 0.95
    assert result.history[-1]["val_r2"] == pytest.approx(validation["r2"], abs=0.05)
    # MAE is reported in target units, so it scales with the spec's std of 10.
    assert validation["mae"] == pytest.approx(
        10 * np.abs(predict_batch(model, x[96:], "regression") - y[96:]).mean(), rel=1e-4
    )
    assert validation["rmse"] >= validation["mae"]


def test_early_stopping_stops_and_restores_the_best_weights() -> None:
    x, y = linear()
    # Validation targets have the opposite sign, so validation loss rises as training fits.
    model = build_model(ARCHITECTURE, 4, 1)
    result = train(
        model,
        x,
        y,
        target_spec=REGRESSION,
        validation=(x[:32], -y[:32]),
        epochs=100,
        early_stopping_patience=3,
    )
    val_losses = [h["val_loss"] for h in result.history]
    assert result.stopped_early
    assert result.epochs_run == len(result.history) < 100
    assert result.best_epoch == int(np.argmin(val_losses)) + 1
    assert result.epochs_run == result.best_epoch + 3
    assert result.metrics["validation"]["loss"] == pytest.approx(min(val_losses), rel=1e-5)


def test_without_early_stopping_every_epoch_runs() -> None:
    x, y = linear()
    result = train(
        build_model(ARCHITECTURE, 4, 1),
        x,
        y,
        target_spec=REGRESSION,
        validation=(x[:32], -y[:32]),
        epochs=8,
        early_stopping_patience=0,
    )
    assert (result.epochs_run, result.stopped_early) == (8, False)


def test_on_epoch_reports_every_epoch_and_its_exceptions_propagate() -> None:
    class Cancelled(Exception):
        pass

    seen: list[EpochMetrics] = []

    def on_epoch(metrics: EpochMetrics) -> None:
        seen.append(metrics)
        if metrics.epoch == 2:
            raise Cancelled

    x, y = blobs()
    with pytest.raises(Cancelled):
        train(
            build_model(ARCHITECTURE, 4, 2),
            x,
            y,
            validation=(x[:8], y[:8]),
            epochs=5,
            on_epoch=on_epoch,
        )
    assert [m.epoch for m in seen] == [1, 2]
    assert set(seen[0].as_dict()) == {"epoch", "epochs", "train_loss", "val_loss", "val_accuracy"}
    assert seen[0].epochs == 5 and seen[0].val_score is not None


def test_on_batch_runs_after_every_step_and_can_stop_mid_epoch() -> None:
    class Late(Exception):
        pass

    steps: list[int] = []

    def on_batch() -> None:
        steps.append(1)
        if len(steps) == 3:
            raise Late

    x, y = blobs(n=64)  # 4 batches of 16 per epoch: the third step is inside epoch 1
    epochs_seen: list[int] = []
    with pytest.raises(Late):
        train(
            build_model(ARCHITECTURE, 4, 2),
            x,
            y,
            epochs=5,
            on_batch=on_batch,
            on_epoch=lambda m: epochs_seen.append(m.epoch),
        )
    assert len(steps) == 3 and epochs_seen == []


def test_divergence_is_a_data_error() -> None:
    x, y = linear()
    with pytest.raises(
        DataError,
        match=r"training diverged at epoch \d+: loss became (nan|inf).*lower learning_rate",
    ) as caught:
        train(
            build_model(ARCHITECTURE, 4, 1),
            x,
            y * 1000,
            target_spec=REGRESSION,
            optimizer="sgd",
            learning_rate=1e6,
            epochs=50,
        )
    assert caught.value.code == "diverged"


def test_empty_validation_is_allowed() -> None:
    x, y = blobs(n=16)
    result = train(build_model(ARCHITECTURE, 4, 2), x, y, epochs=3, early_stopping_patience=1)
    assert result.best_epoch == result.epochs_run == 3
    assert all(h["val_loss"] is None and h["val_accuracy"] is None for h in result.history)
    assert result.metrics["validation"] is None


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_same_seed_gives_bit_identical_weights(optimizer: str) -> None:
    architecture = {**ARCHITECTURE, "dropout": 0.3}
    source = build_model(architecture, 4, 2)

    def run(seed: int, draws: int) -> dict[str, torch.Tensor]:
        torch.rand(draws)  # jobs start from different global RNG states
        model = prepare_model("structure", source, architecture, 4, 2, keep_head=False, seed=seed)
        x, y = blobs()
        train(
            model,
            x,
            y,
            validation=(x[:8], y[:8]),
            epochs=3,
            seed=seed,
            optimizer=optimizer,
            weight_decay=0.01,
        )
        return model.state_dict()

    first, again, other = run(7, draws=1), run(7, draws=5), run(8, draws=1)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_unknown_optimizer_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown optimizer"):
        train(build_model(ARCHITECTURE, 4, 2), *blobs(n=8), optimizer="lbfgs")


def test_predict_batch_shapes() -> None:
    x, _ = blobs(n=6)
    probabilities = predict_batch(build_model(ARCHITECTURE, 4, 3), x, "classification")
    assert probabilities.shape == (6, 3) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)
    values = predict_batch(build_model(ARCHITECTURE, 4, 1), x, "regression")
    assert values.shape == (6,) and values.dtype == np.float32


def test_split_is_a_deterministic_shuffled_partition() -> None:
    train_idx, val_idx = split_indices(50, 0.2, seed=1, labels=None)
    assert len(val_idx) == 10
    assert sorted([*train_idx, *val_idx]) == list(range(50))
    again = split_indices(50, 0.2, seed=1, labels=None)
    assert np.array_equal(train_idx, again[0]) and np.array_equal(val_idx, again[1])
    assert not np.array_equal(val_idx, split_indices(50, 0.2, seed=2, labels=None)[1])
    assert train_idx.tolist() != sorted(train_idx.tolist())


def test_split_is_stratified_when_every_class_has_two_rows() -> None:
    labels = np.array([0] * 80 + [1] * 20)
    _, val_idx = split_indices(100, 0.2, seed=0, labels=labels)
    assert np.bincount(labels[val_idx]).tolist() == [16, 4]
    # A singleton class makes stratification impossible; the split still works.
    _, val_idx = split_indices(5, 0.4, seed=0, labels=np.array([0, 0, 0, 0, 1]))
    assert len(val_idx) == 2


@pytest.mark.parametrize(("n", "fraction"), [(1, 0.5), (10, 0.0)])
def test_split_may_have_no_validation_rows(n: int, fraction: float) -> None:
    train_idx, val_idx = split_indices(n, fraction, seed=0, labels=np.zeros(n))
    assert len(train_idx) == n and len(val_idx) == 0


def test_split_keeps_a_training_row() -> None:
    train_idx, val_idx = split_indices(2, 0.9, seed=0, labels=np.array([0, 1]))
    assert (len(train_idx), len(val_idx)) == (1, 1)
