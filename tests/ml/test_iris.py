import numpy as np
import pandas as pd
from sklearn.datasets import load_iris

from app.ml.architectures import build_model
from app.ml.tabular import encode_target, fit_features, fit_target, transform_features
from app.ml.training import fit, predict_batch, split_indices


def test_iris_first_hundred_rows_keep_all_three_classes_and_train_well() -> None:
    bunch = load_iris(as_frame=True)
    frame = bunch.frame.iloc[:100].copy()
    codes = frame["target"].to_numpy(dtype=np.int64)
    frame["target"] = pd.Categorical.from_codes(codes, categories=pd.Index(bunch.target_names))
    features = list(bunch.feature_names)

    target_spec = fit_target(frame["target"], "classification")
    assert target_spec["classes"] == ["setosa", "versicolor", "virginica"]
    feature_spec = fit_features(frame, features)
    x = transform_features(feature_spec, frame)
    y = encode_target(target_spec, frame["target"])
    train_idx, val_idx = split_indices(len(frame), 0.2, seed=0, labels=y)

    model = build_model({"type": "mlp", "hidden_layers": [10, 10]}, 4, 3)
    result = fit(
        model,
        x[train_idx],
        y[train_idx],
        x[val_idx],
        y[val_idx],
        target_spec=target_spec,
        epochs=20,
        batch_size=16,
        learning_rate=0.01,
        weight_decay=0.0,
        optimizer="adam",
        early_stopping_patience=5,
        seed=0,
    )

    assert result.metrics["validation"]["accuracy"] >= 0.95
    assert result.metrics["train"]["accuracy"] >= 0.95
    probabilities = predict_batch(model, x[val_idx], "classification")
    assert probabilities.shape == (len(val_idx), 3)
    assert set(np.argmax(probabilities, axis=1).tolist()) <= {0, 1}
