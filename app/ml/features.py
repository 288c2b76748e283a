"""Feature statistics keyed by the kind of fitted preprocessing spec.

Fine-tuning needs two things from a spec beyond encoding: refitting its input scaling on the
target rows (`target_normalization`) and naming the standardised inputs whose shift between
source and target is worth reporting. Each spec kind answers both here, so strategies and
cross-validation never look inside a spec themselves.
"""

from typing import Any

import numpy as np

from app.ml import images, inputs, tabular


def spec_kind(spec: dict[str, Any]) -> str:
    """ "tabular" for `tabular.fit_features` specs; other kinds declare themselves in "kind"."""
    kind = spec.get("kind")
    if isinstance(kind, str):
        return kind
    return "tabular" if "columns" in spec else "unknown"


def refit_scaling(spec: dict[str, Any], data: Any) -> dict[str, Any]:
    """`spec` with its input standardisation refitted on `data` (the target's raw rows)."""
    kind = spec_kind(spec)
    if kind == "tabular":
        return tabular.refit_scaling(spec, data)
    if kind == "image":
        return images.refit_image_scaling(spec, data.images)
    raise ValueError(f"refitting the input scaling of {kind!r} preprocessing is not supported")


def shift_features(spec: dict[str, Any], x: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Names and values (rows x named features) of the inputs a domain-shift summary compares.

    The values are on the source's standardised scale, so a column's mean is its shift in
    source standard deviations.
    """
    kind = spec_kind(spec)
    if kind == "tabular":
        columns = tabular.scaled_columns(spec)
        index = [position for _, position in columns]
        return [name for name, _ in columns], np.asarray(x)[:, index].astype(np.float64)
    if kind == "image":
        # Per channel: each image's mean standardised intensity, a brightness/contrast shift
        # summary that stays small however many pixels there are.
        channels = len(spec["mean"])
        per_image = np.asarray(x, dtype=np.float64).reshape(len(x), channels, -1).mean(axis=2)
        return [f"channel_{c}" for c in range(channels)], per_image
    # Any other layout: one summary feature per flattened input.
    flat = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    return [f"input_{i}" for i in range(flat.shape[1])], flat


def encoded_scaling(spec: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """Per encoded input, the (mean, std) of its standardisation, where the spec kind has one
    per input (tabular); None otherwise. `auto` uses it to blend candidates that read the
    source's and the target's scaling into one model."""
    if spec_kind(spec) == "tabular":
        return tabular.encoded_scaling(spec)
    return None


def encode(spec: dict[str, Any], data: Any) -> np.ndarray:
    """The model's input array for raw rows `data` (a frame or an image set), following a spec."""
    return inputs.encode_features(spec, data)
