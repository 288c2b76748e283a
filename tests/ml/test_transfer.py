"""Mechanics of the transfer strategies, cross-validation, auto's choice and the shift summary."""

from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from app.ml import features, serialization, tabular, training, transfer
from app.ml.architectures import MLP, build_model
from app.ml.linear import ABSENT_CLASS_LOGIT, fit_linear, linear_architecture
from app.ml.transfer import _models, l2_sp, registry
from tests.ml.conftest import ARCHITECTURE, CLASSIFICATION, REGRESSION, blobs, linear, train

SETTINGS = transfer.Settings(epochs=6, batch_size=16, learning_rate=0.01, seed=0)


def _data(source_model: nn.Module, **extra: Any) -> transfer.TransferData:
    x, y = blobs(40, seed=1)
    return transfer.TransferData(
        target_spec=CLASSIFICATION,
        x={"source": x, "target": (x - x.mean(axis=0)) / x.std(axis=0)},
        y=y,
        source_model=source_model,
        architecture={**ARCHITECTURE, "input_dim": 4, "output_dim": 2},
        keep_head=True,
        **extra,
    )


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], model: nn.Module) -> set[str]:
    return {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}


ALL = np.arange(40)
NONE = np.zeros(0, dtype=np.int64)


class TestLpFt:
    def test_probe_trains_only_the_head_then_everything_moves(
        self, source_model: nn.Module, monkeypatch: pytest.MonkeyPatch
    ):
        source = _state(source_model)
        seen: list[tuple[int, set[str]]] = []
        model_ref: list[nn.Module] = []

        def on_epoch(metrics: training.EpochMetrics) -> None:
            seen.append((metrics.epoch, _changed(source, model_ref[0])))

        data = _data(source_model)
        spec = registry.get("lp_ft")

        def capture(run: transfer.Run) -> nn.Module:
            model = spec.prepare(run)
            model_ref.append(model)
            return model

        # Watch the model being trained, to see which weights each epoch moved.
        monkeypatch.setitem(registry._STRATEGIES, "lp_ft", replace(spec, prepare=capture))
        trained = transfer.train_candidate(
            transfer.Candidate("lp_ft", "source"), data, SETTINGS, ALL, NONE, on_epoch=on_epoch
        )
        # Three probe epochs (half of six): only the head has moved; then the trunk moves too.
        assert [epoch for epoch, _ in seen] == [1, 2, 3, 4, 5, 6]
        for epoch, changed in seen[:3]:
            assert changed == {"head.weight", "head.bias"}, epoch
        assert any(name.startswith("trunk.") for name in seen[3][1])
        assert trained.result.epochs_run == 6
        assert all(p.requires_grad for p in trained.model.parameters())

    def test_fine_tuning_phase_uses_the_lower_learning_rate(self, source_model: nn.Module):
        # With ft_lr_factor tiny the trunk barely moves; with 1 it moves a lot more.
        def trunk_shift(factor: float) -> float:
            settings = transfer.Settings(
                epochs=10, batch_size=16, learning_rate=0.05, ft_lr_factor=factor
            )
            model = transfer.train_candidate(
                transfer.Candidate("lp_ft", "source"), _data(source_model), settings, ALL, NONE
            ).model
            return sum(
                float((model.state_dict()[k] - v).abs().sum())
                for k, v in source_model.state_dict().items()
                if k.startswith("trunk.")
            )

        assert trunk_shift(1e-6) < 1e-3 < trunk_shift(1.0)

    def test_probe_starts_from_a_converged_linear_fit_on_the_trunk_features(
        self, source_model: nn.Module
    ):
        from sklearn.linear_model import LogisticRegression

        data = _data(source_model)
        # A learning rate too small to move anything: what remains is the probe's fit.
        settings = transfer.Settings(epochs=2, learning_rate=1e-12)
        model = transfer.train_candidate(
            transfer.Candidate("lp_ft", "source"), data, settings, ALL, NONE
        ).model
        with torch.no_grad():
            feats = source_model.trunk(torch.as_tensor(data.x["source"])).numpy()
        expected = LogisticRegression(max_iter=1000).fit(feats, data.y)
        assert np.allclose(model.head.weight.detach().numpy()[1], expected.coef_[0], atol=1e-4)


class TestL2Sp:
    def test_penalty_value(self):
        model = build_model(ARCHITECTURE, 4, 2)
        reference = _state(model)
        with torch.no_grad():
            model.trunk[0].weight.add_(0.5)  # 8x4 entries moved by 0.5 -> 32 * 0.25 = 8
        model.head = nn.Linear(8, 3)  # a replaced head: new weights, not pulled to the source
        penalty = l2_sp.penalty(model, reference, alpha=0.1, beta=0.01)
        new_norm = float(
            model.head.weight.detach().pow(2).sum() + model.head.bias.detach().pow(2).sum()
        )
        assert float(penalty().detach()) == pytest.approx(0.1 * 8.0 + 0.01 * new_norm, rel=1e-5)
        assert float(l2_sp.penalty(model, reference, alpha=0.1, beta=0.0)().detach()) == (
            pytest.approx(0.8, rel=1e-5)
        )

    def test_strong_penalty_keeps_weights_at_the_source(self, source_model: nn.Module):
        def distance(strategy: str, alpha: float) -> float:
            settings = transfer.Settings(epochs=10, learning_rate=0.05, l2_sp_alpha=alpha)
            model = transfer.train_candidate(
                transfer.Candidate(strategy, "target"), _data(source_model), settings, ALL, NONE
            ).model
            return sum(
                float((model.state_dict()[k] - v).pow(2).sum())
                for k, v in source_model.state_dict().items()
            )

        assert distance("l2_sp", 100.0) < 0.1 * distance("parameter", 0.0)


class TestLayerwiseRates:
    def test_scales_decay_from_the_head_down(self):
        model = build_model(ARCHITECTURE, 4, 2)
        scales = _models.layer_lr_scales(model, 0.5)
        assert scales == {
            "head.weight": 1.0,
            "head.bias": 1.0,
            "trunk.3.weight": 0.5,
            "trunk.3.bias": 0.5,
            "trunk.0.weight": 0.25,
            "trunk.0.bias": 0.25,
        }

    def test_batch_norm_shares_the_rate_of_the_layer_before_it(self):
        model = MLP(nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU()), nn.Linear(8, 2))
        scales = _models.layer_lr_scales(model, 0.1)
        assert scales["trunk.1.weight"] == scales["trunk.0.weight"] == pytest.approx(0.1)

    def test_lower_layers_move_less(self, source_model: nn.Module):
        settings = transfer.Settings(epochs=5, learning_rate=0.05, layer_lr_decay=1e-4)
        model = transfer.train_candidate(
            transfer.Candidate("parameter", "target"), _data(source_model), settings, ALL, NONE
        ).model

        def moved(name: str) -> float:
            return float((model.state_dict()[name] - source_model.state_dict()[name]).abs().max())

        assert moved("trunk.0.weight") < 1e-3 < moved("head.weight")

    def test_decay_out_of_range_is_refused(self):
        with pytest.raises(ValueError, match="layer_lr_decay"):
            _models.layer_lr_scales(build_model(ARCHITECTURE, 4, 2), 1.5)


class TestWeightedRows:
    def test_uniform_weights_train_exactly_like_none(self):
        x, y = blobs(32)
        plain, weighted, scaled = (build_model(ARCHITECTURE, 4, 2) for _ in range(3))
        scaled.load_state_dict(plain.state_dict())
        weighted.load_state_dict(plain.state_dict())
        train(plain, x, y, epochs=3)
        train(weighted, x, y, epochs=3, sample_weight=np.ones(32))
        train(scaled, x, y, epochs=3, sample_weight=np.full(32, 7.0))
        for name, value in plain.state_dict().items():
            assert torch.allclose(value, weighted.state_dict()[name], atol=1e-6)
            assert torch.allclose(value, scaled.state_dict()[name], atol=1e-5)

    def test_zero_weight_rows_teach_nothing(self):
        x, y = blobs(32)
        flipped = 1 - y
        model = build_model(ARCHITECTURE, 4, 2)
        # Half the rows carry flipped labels but weigh nothing: the model still learns y.
        train(
            model,
            np.concatenate([x, x]),
            np.concatenate([y, flipped]),
            epochs=20,
            sample_weight=np.concatenate([np.ones(32), np.zeros(32)]),
        )
        assert training.evaluate(model, x, y, CLASSIFICATION)["accuracy"] == 1.0


class TestJoint:
    def test_source_rows_join_with_balancing_weight(self, source_model: nn.Module):
        xs, ys = blobs(120, seed=3)
        data = _data(source_model, source_x=xs, source_y=ys)
        trained = transfer.train_candidate(
            transfer.Candidate("joint", "source"), data, SETTINGS, np.arange(30), NONE
        )
        # 120 source rows and 30 target rows: a target row weighs 4.
        assert "120 source rows and 30 target rows, a target row weighing 4" in trained.notes[0]
        assert trained.result.metrics["train"]["accuracy"] > 0.9

    def test_joint_without_source_rows_is_a_data_error(self, source_model: nn.Module):
        with pytest.raises(Exception, match="source dataset"):
            transfer.train_candidate(
                transfer.Candidate("joint", "source"), _data(source_model), SETTINGS, ALL, NONE
            )


class TestScratch:
    def test_no_source_weight_survives(self, source_model: nn.Module):
        model = transfer.train_candidate(
            transfer.Candidate("scratch", "target"), _data(source_model), SETTINGS, ALL, NONE
        ).model
        for name, value in source_model.state_dict().items():
            assert not torch.equal(value, model.state_dict()[name]), name


class TestTargetNormalization:
    def test_refit_scaling_centres_the_target(self):
        source = pd.DataFrame({"a": [0.0, 1.0, 2.0], "c": ["x", "y", "x"]})
        target = pd.DataFrame({"a": [10.0, 12.0, 14.0], "c": ["y", "y", "x"]})
        spec = tabular.fit_features(source, ["a", "c"])
        refit = features.refit_scaling(spec, target)
        assert refit["columns"][1] == spec["columns"][1]  # categories untouched
        encoded = features.encode(refit, target)
        assert encoded[:, 0].mean() == pytest.approx(0.0, abs=1e-6)
        assert encoded[:, 0].std() == pytest.approx(1.0, abs=1e-5)
        assert encoded.shape == features.encode(spec, target).shape

    def test_batch_norm_statistics_are_refitted(self):
        model = MLP(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)), nn.Linear(4, 2))
        with torch.no_grad():
            model.trunk[0].weight.copy_(torch.eye(4))
            model.trunk[0].bias.zero_()
        x = np.random.default_rng(0).normal(5.0, 2.0, size=(300, 4)).astype(np.float32)
        model.eval()
        before = _state(model)
        assert _models.refit_batchnorm(model, x, batch_size=100) == 1
        norm = model.trunk[1]
        assert torch.allclose(norm.running_mean, torch.as_tensor(x.mean(axis=0)), atol=1e-4)
        assert norm.momentum == 0.1 and not model.training
        # Only buffers changed; no parameter did.
        assert _changed(before, model) <= {
            "trunk.1.running_mean",
            "trunk.1.running_var",
            "trunk.1.num_batches_tracked",
        }

    def test_a_model_without_batch_norm_is_left_alone(self, source_model: nn.Module):
        before = _state(source_model)
        assert _models.refit_batchnorm(source_model, np.ones((8, 4), np.float32)) == 0
        assert not _changed(before, source_model)


class TestLinear:
    def test_matches_scikit_learn_and_serves_as_a_torch_module(self):
        from sklearn.linear_model import LogisticRegression

        x, y = blobs(64)
        x = x + np.random.default_rng(0).normal(0, 2.0, size=x.shape).astype(np.float32)
        spec = {"task": "classification", "classes": ["a", "b", "c"]}
        model = fit_linear(x, y, spec)
        expected = LogisticRegression(max_iter=1000).fit(x, y).predict_proba(x)
        got = training.predict_batch(model, x, "classification")
        assert np.allclose(got[:, :2], expected, atol=1e-4)
        # Class "c" never appeared: its logit is fixed far below the others.
        assert float(model.head.bias.detach()[2]) == ABSENT_CLASS_LOGIT and got[:, 2].max() < 1e-9
        reloaded = serialization.load_model(
            linear_architecture(4, 3), 4, 3, serialization.weights_to_bytes(model)
        )
        assert np.allclose(training.predict_batch(reloaded, x, "classification"), got)

    def test_ridge_regression(self):
        from sklearn.linear_model import Ridge

        x, y = linear()
        model = fit_linear(x, y, REGRESSION, regularisation=0.5)
        expected = Ridge(alpha=0.5).fit(x, y).predict(x)
        assert np.allclose(training.predict_batch(model, x, "regression"), expected, atol=1e-4)

    def test_a_single_class_is_predicted_everywhere(self):
        x = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
        model = fit_linear(x, np.full(10, 1), {"task": "classification", "classes": [0, 1, 2]})
        assert (training.predict_batch(model, x, "classification").argmax(axis=1) == 1).all()


class TestCrossValidation:
    def test_folds_are_stratified_and_cover_every_row_once_per_repeat(self):
        y = np.array([0] * 30 + [1] * 10)
        splits = transfer.fold_indices(y, "classification", 5, 2, seed=0)
        assert len(splits) == 10
        for repeat in range(2):
            tested = np.concatenate([test for _, test in splits[repeat * 5 : repeat * 5 + 5]])
            assert sorted(tested.tolist()) == list(range(40))
        for train_idx, test_idx in splits:
            assert not set(train_idx) & set(test_idx)
            assert (y[test_idx] == 1).sum() == 2 and (y[test_idx] == 0).sum() == 6
        # A second repeat shuffles differently.
        assert not np.array_equal(splits[0][1], splits[5][1])

    def test_regression_strata_spread_the_target(self):
        y = np.arange(40, dtype=np.float64)
        for _, test in transfer.fold_indices(y, "regression", 4, 1, seed=0):
            assert np.ptp(y[test]) >= 25  # each fold holds low and high targets

    def test_too_few_rows(self):
        with pytest.raises(Exception, match="at least 4"):
            transfer.fold_indices(np.array([0, 1, 0]), "classification", 2, 1, seed=0)

    def test_fold_plan_repeats_small_data(self):
        assert transfer.fold_plan(30, 5, None) == (5, 5)
        assert transfer.fold_plan(50, 5, None) == (5, 3)
        assert transfer.fold_plan(500, 5, None) == (5, 1)
        assert transfer.fold_plan(6, 5, 2) == (3, 2)

    def test_scores_are_held_out(self, source_model: nn.Module):
        data = _data(source_model)
        splits = transfer.fold_indices(data.y, "classification", 4, 1, seed=0)
        score = transfer.cross_validate(
            transfer.Candidate("feature", "source"), data, SETTINGS, splits
        )
        assert len(score.scores) == 4 and score.mean > 0.9


def _score(strategy: str, norm: str, values: list[float]) -> transfer.Score:
    return transfer.Score(transfer.Candidate(strategy, norm), values)


class TestChoice:
    def test_best_transfer_mean_wins_and_ties_go_to_the_simpler(self):
        best = transfer.selection.best(
            [_score("joint", "source", [0.9, 0.9]), _score("parameter", "target", [0.8, 1.0])]
        )
        assert best.candidate.strategy == "parameter"  # tie on 0.9: parameter is simpler

    def test_transfer_wins_when_its_paired_gain_exceeds_the_noise(self):
        target_only = [0.6, 0.7, 0.6, 0.65, 0.7, 0.6, 0.65, 0.6]
        transfer_scores = [s + 0.2 + 0.01 * (i % 2) for i, s in enumerate(target_only)]
        choice = transfer.choose(
            [
                _score("linear", "target", target_only),
                _score("parameter", "source", transfer_scores),
            ],
        )
        assert choice.chosen.candidate.name == "parameter/source"
        assert choice.gain == pytest.approx(0.205)
        assert choice.rule.startswith("transfer:")
        assert choice.as_dict()["best_target_only"] == "linear/target"

    def test_target_only_wins_when_the_gain_is_within_the_noise(self):
        target_only = [0.6, 0.9, 0.5, 0.8, 0.7, 0.6, 0.9, 0.5]
        # A higher mean, but the per-split differences swing both ways.
        transfer_scores = [0.9, 0.6, 0.8, 0.6, 0.9, 0.4, 1.0, 0.5]
        choice = transfer.choose(
            [
                _score("scratch", "target", target_only),
                _score("l2_sp", "source", transfer_scores),
            ],
        )
        assert choice.best_transfer is not None
        assert choice.best_transfer.mean > choice.chosen.mean
        assert choice.chosen.candidate.name == "scratch/target"
        assert choice.rule.startswith("target-only:")

    def test_the_simplest_within_one_standard_error_of_the_best_is_picked(self):
        # scratch leads linear by noise (the splits disagree), so the simpler linear is taken.
        scratch = _score("scratch", "target", [0.8, 0.6, 0.9, 0.6])
        linear = _score("linear", "target", [0.6, 0.7, 0.7, 0.7])
        assert transfer.selection.best([scratch, linear]) is scratch
        assert transfer.selection.simplest_within_noise([scratch, linear]) is linear
        # A lead larger than its noise stands.
        clear = _score("scratch", "target", [0.9, 0.8, 0.9, 0.8])
        assert transfer.selection.simplest_within_noise([clear, linear]) is clear

    def test_the_gain_is_paired_split_by_split(self):
        # Both swing together from split to split: the difference alone is what counts.
        a = _score("parameter", "source", [1.0, 0.6, 0.9, 0.5])
        b = _score("linear", "target", [0.9, 0.5, 0.8, 0.4])
        gain, error = transfer.selection.paired_gain(a, b)
        assert gain == pytest.approx(0.1) and error == pytest.approx(0.0, abs=1e-12)
        assert transfer.choose([a, b]).chosen is a

    def test_without_target_only_candidates_the_best_mean_wins(self):
        choice = transfer.choose(
            [_score("parameter", "source", [0.8, 0.8]), _score("parameter", "target", [0.9, 1.0])],
        )
        assert choice.chosen.candidate.name == "parameter/target"

    def test_auto_candidates(self):
        names = [
            c.name for c in transfer.candidates_for("auto", "auto", source_rows=False, tabular=True)
        ]
        assert "scratch/target" in names and "linear/target" in names
        assert "parameter/source" in names and "parameter/target" in names
        assert not any(n.startswith(("joint", "structure", "scratch/source")) for n in names)
        images = transfer.candidates_for("auto", "source", source_rows=True, tabular=False)
        assert all(c.strategy != "linear" for c in images)
        assert "joint/source" in [c.name for c in images]

    def test_target_only_strategies_always_read_the_target_scaling(self):
        for strategy in ("scratch", "structure", "linear"):
            for norm in ("source", "target", "auto"):
                found = transfer.candidates_for(strategy, norm, source_rows=True, tabular=True)
                assert [c.normalization for c in found] == ["target"], (strategy, norm)
        assert {
            c.normalization
            for c in transfer.candidates_for("auto", "source", source_rows=True, tabular=True)
            if not c.uses_source
        } == {"target"}


class TestDomainShift:
    def test_shifted_feature_is_named_and_the_domains_separate(self):
        rng = np.random.default_rng(0)
        source = pd.DataFrame({"a": rng.normal(0, 1, 300), "b": rng.normal(0, 1, 300)})
        target = pd.DataFrame({"a": rng.normal(2, 1, 100), "b": rng.normal(0, 1, 100)})
        spec = tabular.fit_features(source, ["a", "b"])
        shift = transfer.domain_shift(
            spec, features.encode(spec, target), features.encode(spec, source)
        )
        smd = shift["standardised_mean_difference"]
        assert smd["a"] == pytest.approx(2.0, abs=0.3) and abs(smd["b"]) < 0.3
        assert shift["classifier_auc"] > 0.8

    def test_same_distribution_gives_chance_auc_and_no_source_rows_skips_it(self):
        rng = np.random.default_rng(1)
        source = pd.DataFrame({"a": rng.normal(0, 1, 300)})
        target = pd.DataFrame({"a": rng.normal(0, 1, 300)})
        spec = tabular.fit_features(source, ["a"])
        x_t = features.encode(spec, target)
        assert transfer.domain_shift(spec, x_t, features.encode(spec, source))[
            "classifier_auc"
        ] == pytest.approx(0.5, abs=0.1)
        alone = transfer.domain_shift(spec, x_t, None)
        assert alone["classifier_auc"] is None and "unavailable" in alone["note"]
