import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from app.ml import serialization, tabular
from app.ml.architectures import build_mlp
from app.ml.errors import DataError
from app.ml.inference import inference_forward
from app.serving.predictor import Predictor, VersionSpec

NAMES = ["a", "b", "c"]


def _spec(columns: list[dict[str, object]], task: str = "classification") -> VersionSpec:
    input_dim = sum(1 if c["kind"] == "numeric" else len(c["categories"]) for c in columns)  # type: ignore[arg-type]
    target = (
        {"task": "classification", "classes": ["no", "yes"]}
        if task == "classification"
        else {"task": "regression", "mean": 10.0, "std": 2.0}
    )
    return VersionSpec(
        name="m",
        version=1,
        task=task,
        inputs=[{"name": str(c["name"]), "dtype": "float64"} for c in columns],
        target="y",
        architecture={
            "type": "mlp",
            "hidden_layers": [8],
            "input_dim": input_dim,
            "output_dim": 2 if task == "classification" else 1,
        },
        preprocessing={"features": {"columns": columns, "input_dim": input_dim}, "target": target},
    )


NUMERIC = [{"name": n, "kind": "numeric", "mean": 1.0 + i, "std": 2.0} for i, n in enumerate(NAMES)]
MIXED = [*NUMERIC[:2], {"name": "c", "kind": "categorical", "categories": ["x", "z"]}]


def _predictor(columns: list[dict[str, object]], task: str = "classification") -> Predictor:
    spec = _spec(columns, task)
    torch.manual_seed(0)
    architecture = spec.architecture
    model = build_mlp(
        int(architecture["input_dim"]), int(architecture["output_dim"]), hidden_layers=[8]
    )
    return Predictor.load(spec, serialization.weights_to_bytes(model))


class TestEncoding:
    def test_fast_path_equals_the_pandas_transform(self) -> None:
        predictor = _predictor(NUMERIC)
        rows = np.random.default_rng(0).normal(size=(50, 3)).tolist()
        rows[3] = [1, 2, 3]  # integers are numbers too
        expected = tabular.transform_features(
            predictor.spec.preprocessing["features"], pd.DataFrame(rows, columns=NAMES)
        )
        fast = predictor.features_from_instances(rows, booleans_possible=False)
        checked = predictor.features_from_instances(rows)
        assert fast.dtype == np.float32
        np.testing.assert_array_equal(fast, expected)
        np.testing.assert_array_equal(checked, expected)
        records = [dict(zip(NAMES, row, strict=True)) for row in rows]
        np.testing.assert_array_equal(predictor.features_from_records(records), expected)

    def test_a_matrix_encodes_like_its_rows(self) -> None:
        predictor = _predictor(NUMERIC)
        rows = np.random.default_rng(1).normal(size=(20, 3)) * 10
        encoded = predictor.features_from_matrix(rows)
        assert encoded is not None and encoded.dtype == np.float32
        np.testing.assert_array_equal(encoded, predictor.features_from_instances(rows.tolist()))

    def test_a_matrix_it_cannot_vouch_for_is_handed_back(self) -> None:
        predictor = _predictor(NUMERIC)
        assert predictor.features_from_matrix(np.ones((2, 4))) is None  # another width
        assert predictor.features_from_matrix(np.ones(3)) is None
        # Overflows float32 once standardised: the checked path names the value.
        assert predictor.features_from_matrix(np.array([[1.0, 2.0, 1e300]])) is None
        # Categories arrive as numbers only by mistake; the checked path decides.
        assert _predictor(MIXED).features_from_matrix(np.ones((2, 3))) is None

    def test_categorical_inputs_take_the_checked_path(self) -> None:
        predictor = _predictor(MIXED)
        encoded = predictor.features_from_instances([[1.0, 2.0, "z"], [1.0, 2.0, "new"]])
        assert encoded.shape == (2, 4)
        assert encoded[0, 2:].tolist() == [0.0, 1.0] and encoded[1, 2:].tolist() == [0.0, 0.0]

    def test_records_may_carry_the_target(self) -> None:
        predictor = _predictor(NUMERIC)
        encoded = predictor.features_from_records([{"a": 1, "b": 2, "c": 3, "y": "yes"}])
        assert encoded.shape == (1, 3)

    @pytest.mark.parametrize(
        "row, fragment",
        [
            ([1.0, "2.5", 3.0], "instance 1, feature 'b': expected a number, got '2.5'"),
            ([1.0, True, 3.0], "instance 1, feature 'b': expected a number, got True"),
            ([1.0, None, 3.0], "instance 1, feature 'b': expected a number, got None"),
            ([1.0, 2.0, float("nan")], "instance 1, feature 'c': expected a finite number"),
            ([1.0, 2.0, float("inf")], "instance 1, feature 'c': expected a finite number"),
            ([1.0, 10**400, 3.0], "instance 1, feature 'b': expected a finite number"),
            ([1.0, 2.0, 1e300], "instance 1, feature 'c': 1e+300 is out of the range"),
            ([1.0, [2.0], 3.0], "instance 1, feature 'b': expected a number, got [2.0]"),
        ],
    )
    def test_bad_values_are_named_by_instance_and_feature(
        self, row: list[object], fragment: str
    ) -> None:
        predictor = _predictor(NUMERIC)
        with pytest.raises(DataError) as caught:
            predictor.features_from_instances([[0.0, 0.0, 0.0], row])
        assert fragment in str(caught.value)
        assert caught.value.code == "invalid_data"

    @pytest.mark.parametrize(
        "rows, fragment",
        [
            ([[1.0, 2.0]], "expected 3 features ['a', 'b', 'c'], got 2 in instance 0"),
            ([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0]], "got 4 in instance 1"),
            ([[1.0, 2.0, 3.0], 5.0], "instance 1: expected a list of 3 values"),
        ],
    )
    def test_wrong_shapes_are_feature_mismatches(self, rows: list[object], fragment: str) -> None:
        with pytest.raises(DataError) as caught:
            _predictor(NUMERIC).features_from_instances(rows)
        assert fragment in str(caught.value) and caught.value.code == "feature_mismatch"

    def test_records_with_missing_and_unknown_keys(self) -> None:
        with pytest.raises(DataError) as caught:
            _predictor(NUMERIC).features_from_records([{"a": 1, "b": 2, "colour": 3}])
        message = str(caught.value)
        assert "record 0" in message and "missing ['c']" in message
        assert "unknown ['colour']" in message and caught.value.code == "feature_mismatch"

    def test_record_values_are_named_by_record(self) -> None:
        with pytest.raises(DataError, match="record 0, feature 'a': expected a number"):
            _predictor(NUMERIC).features_from_records([{"a": "x", "b": 2, "c": 3}])


class TestOutputs:
    def test_classification_and_regression(self) -> None:
        classifier = _predictor(NUMERIC)
        out = classifier.outputs(
            classifier.forward(classifier.features_from_instances([[1, 2, 3]]))
        )
        assert out.predictions in (["no"], ["yes"]) and out.classes == ["no", "yes"]
        assert out.probabilities is not None
        assert out.probabilities.sum() == pytest.approx(1.0, abs=1e-6)
        regressor = _predictor(NUMERIC, task="regression")
        raw = regressor.forward(regressor.features_from_instances([[1, 2, 3], [0, 0, 0]]))
        values = regressor.outputs(raw).as_dict()["predictions"]
        assert values == pytest.approx((raw.astype(np.float64) * 2.0 + 10.0).tolist())

    def test_memory_bytes_counts_parameters_and_matches_the_weights_header(self) -> None:
        predictor = _predictor(NUMERIC)
        expected = sum(p.numel() * 4 for p in predictor.model.parameters())
        weights = serialization.weights_to_bytes(predictor.model)
        assert predictor.memory_bytes == expected == serialization.tensor_bytes(weights)


class TestInferenceForward:
    def test_flattened_mlp_gives_the_module_outputs(self) -> None:
        model = build_mlp(5, 3, hidden_layers=[16, 8], dropout=0.3, activation="gelu").eval()
        forward = inference_forward(model)
        assert forward is not model
        x = torch.randn(7, 5)
        with torch.inference_mode():
            assert torch.equal(forward(x), model(x))

    def test_other_models_are_called_as_they_are(self) -> None:
        model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)).eval()
        assert inference_forward(model) is model
        hooked = build_mlp(3, 2, hidden_layers=[4]).eval()
        hooked.trunk[0].register_forward_hook(lambda *args: None)
        assert inference_forward(hooked) is hooked

    def test_needs_eval_mode(self) -> None:
        with pytest.raises(ValueError, match="eval mode"):
            inference_forward(build_mlp(3, 2, hidden_layers=[4]))
