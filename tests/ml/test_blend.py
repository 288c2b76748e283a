"""`auto`'s blends: the guard between groups blends the candidates within noise of each
group's best, and a chosen blend is served as one `Ensemble` model."""

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from app.ml import serialization, tabular, training, transfer
from app.ml.architectures import Ensemble, build_model
from app.ml.transfer import selection
from tests.ml.conftest import ARCHITECTURE, CLASSIFICATION, blobs, train

SETTINGS = transfer.Settings(epochs=8, batch_size=16, learning_rate=0.01, seed=0)


def _mlp(seed: int, output_dim: int = 2) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(ARCHITECTURE, 4, output_dim).eval()


class TestEnsemble:
    def test_classification_serves_the_mean_of_the_members_probabilities(self):
        members = [_mlp(1), _mlp(2), _mlp(3)]
        ensemble = Ensemble(members, [1.0, 1.0, 2.0], "probabilities", 4).eval()
        x = torch.randn(5, 4)
        with torch.no_grad():
            expected = sum(
                w * torch.softmax(m(x), dim=1)
                for w, m in zip([0.25, 0.25, 0.5], members, strict=True)
            )
            assert torch.allclose(torch.softmax(ensemble(x), dim=1), expected, atol=1e-6)

    def test_regression_serves_the_mean_output(self):
        members = [_mlp(1, 1), _mlp(2, 1)]
        ensemble = Ensemble(members, [1.0, 1.0], "mean", 4).eval()
        x = torch.randn(5, 4)
        with torch.no_grad():
            assert torch.allclose(ensemble(x), (members[0](x) + members[1](x)) / 2, atol=1e-6)

    @pytest.mark.parametrize("combine, output_dim", [("probabilities", 3), ("mean", 1)])
    def test_stacked_members_predict_as_the_loop_does(self, combine: str, output_dim: int):
        """In inference, MLPs of one shape run as batched matrix products; the answer is the
        loop's, with other members (another shape, a linear model) beside them, and it
        follows weights loaded later."""
        from app.ml.forest import fit_forest

        torch.manual_seed(0)
        wide = {**ARCHITECTURE, "hidden_layers": [16, 8]}
        linear = {**ARCHITECTURE, "hidden_layers": []}
        members = [build_model(ARCHITECTURE, 4, output_dim) for _ in range(3)]
        members += [build_model(wide, 4, output_dim), build_model(linear, 4, output_dim)]
        members += [build_model(wide, 4, output_dim)]
        if output_dim > 1:
            rows = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
            members.append(
                fit_forest(
                    rows, np.arange(30) % 3, {"task": "classification", "classes": [0, 1, 2]}
                )[0]
            )
        weights = [1.0 + i for i in range(len(members))]
        ensemble = Ensemble([m.eval() for m in members], weights, combine, 4).eval()
        ensemble.input_scale[1:3] = torch.tensor([2.0, 0.5, 1.0, 3.0])
        ensemble.input_shift[2:] = torch.tensor([0.1, -0.2, 0.0, 1.0])
        x = torch.randn(7, 4)
        with torch.inference_mode():
            stacked = ensemble(x)
        groups, alone = ensemble._stacks()
        assert [g.index.tolist() for g in groups] == [[0, 1, 2], [3, 5]]
        assert alone == ([4, 6] if output_dim > 1 else [4])
        with torch.no_grad():
            # The plain loop, member by member.
            looped = ensemble._finish(ensemble._mean_of(x, range(len(members))))
        assert torch.allclose(stacked, looped, atol=1e-5)
        # Other weights loaded: the stacks follow.
        state = ensemble.state_dict()
        state["members.1.head.weight"] = state["members.1.head.weight"] * -2.0
        ensemble.load_state_dict(state)
        with torch.no_grad():
            looped = ensemble._finish(ensemble._mean_of(x, range(len(members))))
        with torch.inference_mode():
            assert torch.allclose(ensemble(x), looped, atol=1e-5)
            # Many rows go through in pieces, with the same answer.
            many = torch.randn(2000, 4)
            pieces = ensemble(many)
        with torch.no_grad():
            assert torch.allclose(
                pieces, ensemble._finish(ensemble._mean_of(many, range(len(members)))), atol=1e-5
            )

    def test_bad_members_or_weights_are_refused(self):
        with pytest.raises(ValueError, match="combine"):
            Ensemble([_mlp(1)], [1.0], "vote", 4)
        with pytest.raises(ValueError, match="positive weight"):
            Ensemble([_mlp(1), _mlp(2)], [1.0], "probabilities", 4)

    def test_it_is_rebuilt_from_its_architecture_and_weights(self):
        members = [_mlp(1), _mlp(2)]
        ensemble = Ensemble(members, [1.0, 1.0], "probabilities", 4).eval()
        ensemble.input_scale[1] = torch.tensor([2.0, 1.0, 0.5, 1.0])
        ensemble.input_shift[1] = torch.tensor([0.1, 0.0, -0.3, 0.0])
        architecture = {
            "type": "ensemble",
            "members": [{**ARCHITECTURE, "input_dim": 4, "output_dim": 2}] * 2,
            "weights": [1.0, 1.0],
            "combine": "probabilities",
        }
        loaded = serialization.load_model(
            architecture, 4, 2, serialization.weights_to_bytes(ensemble)
        )
        x = torch.randn(6, 4)
        with torch.no_grad():
            assert torch.allclose(loaded(x), ensemble(x))


def _frame(rng: np.random.Generator, n: int, shift: float) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "a": rng.normal(10.0 + shift, 2.0, n),
            "b": rng.normal(-3.0, 0.5 + shift, n),
            "colour": rng.choice(["red", "blue"], n),
        }
    )


def test_a_member_on_the_other_scaling_reads_its_own_standardisation():
    """Inside an ensemble reading the source's scaling, a member trained on the target's
    scaling sees exactly the inputs the target's scaling gives."""
    rng = np.random.default_rng(0)
    source, target = _frame(rng, 200, 0.0), _frame(rng, 30, 3.0)
    spec = tabular.fit_features(source, ["a", "b", "colour"])
    refit = tabular.refit_scaling(spec, target)
    x_source = tabular.transform_features(spec, target)
    x_target = tabular.transform_features(refit, target)
    data = transfer.TransferData(
        target_spec=CLASSIFICATION,
        x={"source": x_source, "target": x_target},
        y=np.arange(30) % 2,
        source_model=None,
        architecture={**ARCHITECTURE, "input_dim": 4, "output_dim": 2},
        keep_head=True,
        scalings={
            "source": tabular.encoded_scaling(spec),
            "target": tabular.encoded_scaling(refit),
        },
    )
    scale, shift = transfer.plan._rescaling(data, "source", "target")
    assert np.allclose(x_source * scale + shift, x_target, atol=1e-5)
    # The one-hot inputs pass through unchanged.
    assert np.allclose(scale[2:], 1.0) and np.allclose(shift[2:], 0.0)


def _candidate(name: str) -> transfer.Candidate:
    strategy, norm = name.split("/")
    return transfer.Candidate(strategy, norm)


class TestGuardOverBlends:
    y = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    splits = [
        (np.arange(8)[np.arange(8) % 4 != k], np.arange(8)[np.arange(8) % 4 == k]) for k in range(4)
    ]

    def _score(self, name: str, confidences: list[float]) -> selection.Score:
        """A candidate giving the right class probability `confidences[k]` on split k."""
        predictions = []
        for (_, test), confidence in zip(self.splits, confidences, strict=True):
            p = np.full((len(test), 2), 1 - confidence)
            p[np.arange(len(test)), self.y[test]] = confidence
            predictions.append(p)
        return selection.score_splits(
            _candidate(name), "classification", self.y, self.splits, predictions
        )

    def blender(self, members: list[selection.Score]) -> selection.Score:
        return selection.blend(members, "classification", self.y, self.splits)

    def test_candidates_within_noise_of_the_best_are_blended(self):
        # Each leads on half the splits: the rows cannot tell them apart.
        a = self._score("parameter/source", [0.95, 0.7, 0.95, 0.7])
        b = self._score("l2_sp/source", [0.7, 0.95, 0.7, 0.94])
        floor = self._score("linear/target", [0.55, 0.56, 0.55, 0.56])
        choice = selection.choose([a, b, floor], "brier", self.blender)
        assert [m.candidate.name for m in choice.chosen.members] == [
            "parameter/source",
            "l2_sp/source",
        ]
        assert choice.chosen.name == "blend of parameter/source + l2_sp/source"
        assert choice.as_dict()["members"] == ["parameter/source", "l2_sp/source"]
        assert choice.rule.startswith("transfer: blend of parameter/source + l2_sp/source")
        # The blend is scored from the mean of the members' out-of-fold probabilities.
        assert choice.chosen.mean == pytest.approx(1.0)

    def test_a_lead_larger_than_its_noise_stays_a_single_candidate(self):
        a = self._score("parameter/source", [0.95, 0.9, 0.95, 0.92])
        b = self._score("l2_sp/source", [0.7, 0.72, 0.7, 0.71])
        floor = self._score("linear/target", [0.55, 0.56, 0.55, 0.56])
        choice = selection.choose([a, b, floor], "brier", self.blender)
        assert choice.chosen is a and choice.as_dict()["members"] == ["parameter/source"]

    def test_the_guard_still_keeps_the_target_only_entry_when_transfer_is_noise(self):
        a = self._score("parameter/source", [0.9, 0.5, 0.9, 0.5])
        floor = self._score("linear/target", [0.7, 0.7, 0.7, 0.69])
        choice = selection.choose([a, floor], "brier", self.blender)
        assert choice.chosen is floor and choice.rule.startswith("target-only:")


def fold_model_predictions(
    data: transfer.TransferData,
    candidate: transfer.Candidate,
    settings: transfer.Settings,
    x: np.ndarray,
) -> list[np.ndarray]:
    """Predictions of `x` by the candidate's models on the folds auto delivers (the first
    `plan.BAG_REPEATS` repeats), each trained as cross-validation trains it."""
    folds, repeats = transfer.fold_plan(len(data.y), 4, None)
    splits = transfer.fold_indices(data.y, data.task, folds, repeats, settings.seed)
    predictions = []
    for train_idx, _ in splits[: folds * transfer.plan.BAG_REPEATS]:
        fit_idx, val_idx = transfer.holdout(candidate, data, train_idx, 0.2, settings.seed)
        trained = transfer.train_candidate(candidate, data, settings, fit_idx, val_idx)
        predictions.append(training.predict_batch(trained.model, x, data.task))
    return predictions


def test_auto_delivers_a_chosen_blend_as_one_model_that_matches_its_members(
    monkeypatch: pytest.MonkeyPatch,
):
    """When the guard picks a blend, the delivered model is every member's cross-validation
    fold models, each member weighing the same; its predictions are the mean of theirs."""
    x, y = blobs(40, seed=1)
    torch.manual_seed(0)
    source_model = build_model(ARCHITECTURE, 4, 2)
    train(source_model, *blobs(64, seed=0), epochs=5)
    target = (x - x.mean(axis=0)) / x.std(axis=0)
    data = transfer.TransferData(
        target_spec=CLASSIFICATION,
        x={"source": x, "target": target},
        y=y,
        source_model=source_model,
        architecture={**ARCHITECTURE, "input_dim": 4, "output_dim": 2},
        keep_head=True,
        scalings={
            "source": (np.zeros(4), np.ones(4)),
            "target": (x.mean(axis=0).astype(np.float64), x.std(axis=0).astype(np.float64)),
        },
    )
    blended = [transfer.Candidate("parameter", "source"), transfer.Candidate("l2_sp", "target")]
    real_choose = selection.choose

    def choose_a_blend(scores, metric="score", blender=None):
        choice = real_choose(scores, metric, blender)
        by_name = {s.candidate: s for s in scores}
        assert blender is not None
        choice.chosen = blender([by_name[c] for c in blended])
        return choice

    monkeypatch.setattr(selection, "choose", choose_a_blend)
    result = transfer.fine_tune(data, transfer.Request("auto", "auto", SETTINGS))
    model = result.trained.model
    assert isinstance(model, Ensemble)
    assert result.choice == blended[0]
    architecture = result.trained.architecture
    assert architecture is not None
    assert architecture["candidates"] == ["parameter/source", "l2_sp/target"]
    # 40 rows: 4 folds x 3 repeats, of which the first two repeats' models are delivered.
    assert architecture["fold_models"] == [8, 8]
    assert len(model.members) == 16
    assert result.extra_metrics["transfer_report"]["members"] == [c.name for c in blended]
    expected = np.mean(
        [
            np.mean(fold_model_predictions(data, c, SETTINGS, data.x[c.normalization]), axis=0)
            for c in blended
        ],
        axis=0,
    )
    served = training.predict_batch(model, data.x["source"], "classification")
    assert np.allclose(served, expected, atol=1e-5)
    # The reported validation metrics are out-of-fold: every row, by models that never saw it.
    assert result.validation_rows == len(y)
    assert 0.0 <= result.trained.result.metrics["validation"]["accuracy"] <= 1.0
