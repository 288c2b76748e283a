"""The `forest` strategy's model: a scikit-learn random forest as tensors, predicting exactly
what the forest predicts, rebuilt from its architecture and weights, and exportable."""

import io

import numpy as np
import pytest
import torch
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

from app.ml import serialization
from app.ml.forest import FOREST_MAX_LEAVES, Forest, fit_forest

CLASSES = {"task": "classification", "classes": ["a", "b", "c", "d"]}


def _rows(seed: int, n: int, width: int = 5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, width)).astype(np.float32)
    # Repeated values (a coarse input) put test rows exactly on split thresholds.
    x[:, 0] = np.round(x[:, 0], 1)
    return x


def _probabilities(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(x)), dim=1).numpy()


class TestFitForest:
    def test_classification_matches_scikit_learn_and_absent_classes_get_nothing(self):
        x, test = _rows(0, 60), _rows(1, 400)
        # Class 3 ("d") never appears among the training rows.
        y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5).astype(int) * 2 % 3
        model, architecture = fit_forest(x, y, CLASSES, seed=7)
        reference = RandomForestClassifier(
            n_estimators=100, max_leaf_nodes=FOREST_MAX_LEAVES, random_state=7, n_jobs=1
        ).fit(x, y)
        expected = np.zeros((len(test), 4))
        expected[:, reference.classes_] = reference.predict_proba(test)
        assert np.abs(_probabilities(model, test) - expected).max() < 1e-5
        assert architecture["type"] == "forest" and architecture["output_dim"] == 4
        assert architecture["leaves"] <= FOREST_MAX_LEAVES

    def test_regression_matches_scikit_learn_on_rows_that_sit_on_thresholds(self):
        x, test = _rows(2, 40), _rows(3, 400)
        y = x[:, 0] * 2 - x[:, 2] + np.random.default_rng(4).normal(0, 0.1, len(x))
        model, architecture = fit_forest(x, y, {"task": "regression"}, seed=1)
        reference = RandomForestRegressor(
            n_estimators=100, max_leaf_nodes=FOREST_MAX_LEAVES, random_state=1, n_jobs=1
        ).fit(x, y)
        with torch.no_grad():
            predicted = model(torch.from_numpy(test)).numpy()
        assert predicted.shape == (len(test), 1)
        assert np.abs(predicted[:, 0] - reference.predict(test)).max() < 1e-4
        # Training rows sit on the thresholds' neighbours; they too land in the right leaves.
        with torch.no_grad():
            on_train = model(torch.from_numpy(x)).numpy()[:, 0]
        assert np.abs(on_train - reference.predict(x)).max() < 1e-4
        assert architecture["combine"] == "mean"

    def test_a_single_class_is_predicted_whatever_the_input(self):
        x = _rows(5, 6)
        model, _ = fit_forest(x, np.full(6, 2), CLASSES)
        probabilities = _probabilities(model, _rows(6, 10) * 100)
        assert np.allclose(probabilities[:, 2], 1.0)

    def test_bad_input_is_refused(self):
        with pytest.raises(ValueError, match="rows x features"):
            fit_forest(np.zeros((0, 3)), np.zeros(0), CLASSES)
        with pytest.raises(ValueError, match="combine"):
            Forest(3, 2, 1, 1, 2, "vote")


def test_it_is_rebuilt_from_its_architecture_and_weights_and_scripts():
    x = _rows(8, 50)
    y = (x[:, 1] > 0).astype(int)
    model, architecture = fit_forest(x, y, CLASSES, seed=3)
    loaded = serialization.load_model(architecture, 5, 4, serialization.weights_to_bytes(model))
    test = _rows(9, 100)
    assert np.array_equal(_probabilities(loaded, test), _probabilities(model, test))
    scripted = torch.jit.script(model)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    reloaded = torch.jit.load(io.BytesIO(buffer.getvalue()))
    assert np.allclose(_probabilities(reloaded, test), _probabilities(model, test))
