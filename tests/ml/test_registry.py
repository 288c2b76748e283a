"""The strategy registry drives validation, the OpenAPI document and auto's candidates; the
plan feeds target-only models the target's scaling and guards auto's choice."""

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError
from torch import nn

from app.config import Settings as AppSettings
from app.main import create_app
from app.ml import training, transfer
from app.ml.architectures import build_model
from app.ml.transfer import registry
from app.ml.transfer.candidates import Run, Trained
from app.schemas.jobs import FineTuningCreate
from tests.ml.conftest import ARCHITECTURE, CLASSIFICATION, train

SEEN: list[Run] = []


def _prepare(run: Run) -> nn.Module:
    SEEN.append(run)
    return run.fresh_model()


def _train(run: Run, model: nn.Module) -> Trained:
    return run.fit(model)


@pytest.fixture
def dummy() -> Iterator[registry.StrategySpec]:
    spec = registry.register(
        registry.StrategySpec(
            name="dummy_target_only",
            description="a test strategy: fresh weights on the target.",
            uses_source_weights=False,
            trains="every weight",
            prepare=_prepare,
            train=_train,
        )
    )
    SEEN.clear()
    yield spec
    registry.unregister(spec.name)


def _request(strategy: str, **extra: Any) -> dict[str, Any]:
    return {
        "base_model": {"name": "m"},
        "dataset_id": "ds_x",
        "target_column": "y",
        "model_name": "out",
        "strategy": strategy,
        **extra,
    }


def _data(source_model: nn.Module, n: int = 24, seed: int = 0) -> transfer.TransferData:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.normal(0.0, 0.5, size=(n, 4)) + np.where(y[:, None] == 1, 1.0, -1.0)
    return transfer.TransferData(
        target_spec=CLASSIFICATION,
        # The source's scaling is off by a factor and an offset, as another instrument's is.
        x={"source": (x * 5.0 + 3.0).astype(np.float32), "target": x.astype(np.float32)},
        y=y.astype(np.int64),
        source_model=source_model,
        architecture={**ARCHITECTURE, "input_dim": 4, "output_dim": 2},
        keep_head=True,
    )


class TestRegistryDrivesTheRest:
    def test_a_new_strategy_is_accepted_documented_and_tried_by_auto(
        self, dummy: registry.StrategySpec
    ) -> None:
        assert FineTuningCreate.model_validate(_request(dummy.name)).strategy == dummy.name
        assert dummy.name in registry.names(with_auto=True)
        found = transfer.candidates_for("auto", "auto", source_rows=False, tabular=True)
        assert transfer.Candidate(dummy.name, "target") in found
        app = create_app(AppSettings(auth="disabled", workers=0))
        strategy = app.openapi()["components"]["schemas"]["FineTuningCreate"]["properties"][
            "strategy"
        ]
        assert dummy.name in strategy["enum"] and "auto" in strategy["enum"]
        assert "a test strategy" in strategy["description"]

    def test_an_unknown_strategy_is_refused_naming_the_known_ones(self) -> None:
        with pytest.raises(ValidationError, match="unknown strategy 'lora'; expected one of"):
            FineTuningCreate.model_validate(_request("lora"))
        registry.unregister("nothing_here")  # a no-op, not an error

    def test_names_cannot_be_reused_or_be_auto(self, dummy: registry.StrategySpec) -> None:
        with pytest.raises(ValueError, match="already registered"):
            registry.register(dummy)
        with pytest.raises(ValueError, match="cannot name a strategy"):
            registry.register(registry.StrategySpec(**{**dummy.__dict__, "name": "auto"}))

    def test_every_strategy_is_documented_and_joint_alone_needs_source_rows(self) -> None:
        for spec in registry.specs():
            assert spec.description and spec.trains
        assert [s.name for s in registry.specs() if s.needs_source_rows] == ["joint"]
        assert registry.needs_source_rows("joint") and not registry.needs_source_rows(None)

    def test_auto_searches_the_normalisation_unless_one_is_given(self) -> None:
        assert FineTuningCreate.model_validate(_request("auto")).target_normalization == "auto"
        fixed = FineTuningCreate.model_validate(_request("auto", target_normalization="source"))
        assert fixed.target_normalization == "source"
        assert FineTuningCreate.model_validate(_request("feature")).target_normalization == "source"


class TestTargetOnlyCandidatesReadTheTargetScaling:
    def test_whatever_the_request_says(
        self, dummy: registry.StrategySpec, source_model: nn.Module
    ) -> None:
        data = _data(source_model)
        settings = transfer.Settings(epochs=2, seed=0)
        for normalization in ("source", "target"):
            SEEN.clear()
            request = transfer.Request(dummy.name, normalization, settings)
            result = transfer.fine_tune(data, request, report=False)
            assert result.choice.normalization == "target"
            assert SEEN and all(run.x is data.x["target"] for run in SEEN)
        for strategy in ("scratch", "linear", "structure"):
            request = transfer.Request(strategy, "source", settings)
            assert transfer.fine_tune(data, request).choice.normalization == "target"


class TestGuard:
    def test_auto_keeps_a_target_only_model_when_the_source_is_unrelated_noise(self) -> None:
        # A source model that learnt random labels on random inputs knows nothing useful.
        rng = np.random.default_rng(7)
        noise_model = build_model(ARCHITECTURE, 4, 2)
        train(
            noise_model,
            rng.normal(size=(200, 4)).astype(np.float32),
            rng.integers(0, 2, 200),
            epochs=30,
        )
        data = _data(noise_model, n=32, seed=3)
        settings = transfer.Settings(epochs=15, learning_rate=0.01, seed=0)
        messages: list[str] = []
        result = transfer.fine_tune(
            data,
            transfer.Request("auto", "auto", settings, cv_repeats=2),
            emit=lambda kind, message, payload: messages.append(message),
        )
        assert result.choice.uses_source is False
        selection = result.extra_metrics["selection"]
        assert selection["rule"].startswith("target-only:")
        assert selection["paired_gain"] <= max(
            selection["gain_standard_error"], selection["minimum_gain"]
        )
        assert any("no transfer candidate's gain was larger than its noise" in m for m in messages)

    def test_auto_delivers_the_fold_models_its_cross_validation_trained(
        self, source_model: nn.Module
    ) -> None:
        from tests.ml.test_blend import fold_model_predictions

        data = _data(source_model, n=32, seed=1)
        settings = transfer.Settings(epochs=10, learning_rate=0.01, seed=2)
        chosen = transfer.fine_tune(data, transfer.Request("auto", "auto", settings))
        members = [
            transfer.Candidate(*name.split("/"))
            for name in chosen.extra_metrics["selection"]["members"]
        ]
        primary = members[0].normalization
        expected = []
        for member in members:
            if member.spec.closed_form:
                # Fitted on every row: it holds nothing out, so its folds would only lose rows.
                named = transfer.fine_tune(
                    data,
                    transfer.Request(member.strategy, member.normalization, settings),
                    report=False,
                )
                assert named.validation_rows == 0
                expected.append(
                    training.predict_batch(
                        named.trained.model, data.x[member.normalization], data.task
                    )
                )
            else:
                folds = fold_model_predictions(data, member, settings, data.x[member.normalization])
                expected.append(np.mean(folds, axis=0))
        delivered = training.predict_batch(chosen.trained.model, data.x[primary], data.task)
        assert np.allclose(delivered, np.mean(expected, axis=0), atol=1e-5)

    def test_a_closed_form_candidate_learns_from_every_row(self, source_model: nn.Module) -> None:
        data = _data(source_model, n=30, seed=1)
        result = transfer.fine_tune(
            data, transfer.Request("linear", "target", transfer.Settings()), report=False
        )
        assert (result.train_rows, result.validation_rows) == (30, 0)
        rows = np.arange(30)
        train, val = transfer.holdout(transfer.Candidate("parameter", "source"), data, rows, 0.2, 0)
        assert (len(train), len(val)) == (24, 6) and set(train) | set(val) == set(rows)


def test_regression_folds_score_against_the_variance_of_every_row() -> None:
    y_all = np.linspace(-2, 2, 20)
    test = y_all[:5]
    reported, chosen_by = transfer.selection.fold_score("regression", test, test + 0.1, y_all)
    assert reported == chosen_by == pytest.approx(1 - 0.01 / y_all.var())
    probabilities = np.array([[0.9, 0.1], [0.4, 0.6]])
    accuracy, brier = transfer.selection.fold_score(
        "classification", np.array([0, 0]), probabilities, np.array([0, 0])
    )
    assert accuracy == 0.5 and brier == pytest.approx(-(0.02 + 0.72) / 2)
