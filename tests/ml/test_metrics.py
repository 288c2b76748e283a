import numpy as np
import pytest
from sklearn.metrics import f1_score, r2_score

from app.ml.metrics import f1_macro, r2


@pytest.mark.parametrize(
    ("y_true", "predicted"),
    [([0, 1, 2, 2], [0, 2, 2, 1]), ([0, 0, 1], [2, 2, 2]), ([1, 1], [1, 1]), ([3], [0])],
)
def test_f1_macro_matches_scikit_learn(y_true: list[int], predicted: list[int]) -> None:
    expected = f1_score(y_true, predicted, average="macro", zero_division=0)
    assert f1_macro(np.array(y_true), np.array(predicted)) == pytest.approx(expected)


def test_r2_matches_scikit_learn_and_handles_degenerate_targets() -> None:
    y, pred = np.array([1.0, 2.0, 4.0]), np.array([1.5, 2.0, 3.0])
    assert r2(y, pred) == pytest.approx(r2_score(y, pred))
    assert r2(np.array([2.0, 2.0]), np.array([2.0, 2.0])) == 1.0
    assert r2(np.array([2.0, 2.0]), np.array([1.0, 2.0])) == 0.0
    assert r2(np.array([1.0]), np.array([1.0])) is None
