"""Image datasets: reading .npz archives, per-channel scaling, and image inputs for prediction.

An image dataset is an .npz archive holding `X` (NxHxW or NxCxHxW numbers) and `y` (N labels
or values), optionally `classes` (the full label space, in order). Images are kept as float32
NxCxHxW; models read them flattened to Nx(C·H·W), so the training loop, the row splits and
the strategies treat them like any other feature matrix.
"""

import io
import math
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from app.ml.errors import DataError
from app.ml.frames import column_dtype, load_builtin

IMAGE_COLUMN = "image"
LABEL_COLUMN = "y"
MAX_CHANNELS = 16
MAX_SIDE = 1024
# Compressed archives can expand far beyond the upload limit; this bounds what one decodes to.
MAX_DECODED_BYTES = 1024 * 1024 * 1024

_NUMERIC_KINDS = "biuf"
_LABEL_KINDS = "biufU"
# Builtin datasets that are images at heart, with their (C, H, W).
BUILTIN_IMAGE_SHAPES: dict[str, tuple[int, int, int]] = {"digits": (1, 8, 8)}


@dataclass(frozen=True)
class ImageSet:
    """Decoded image data: `images` is float32 NxCxHxW, `labels` a Series named "y"."""

    images: np.ndarray
    labels: pd.Series
    stored_dtype: str

    @property
    def shape(self) -> list[int]:
        """(C, H, W) of one image."""
        return [int(side) for side in self.images.shape[1:]]

    def columns(self) -> list[dict[str, Any]]:
        """The dataset's schema as the API shows it: the image column, then the labels."""
        return [
            {"name": IMAGE_COLUMN, "dtype": self.stored_dtype, "shape": self.shape},
            {"name": LABEL_COLUMN, "dtype": column_dtype(self.labels)},
        ]


def read_npz(data: bytes) -> ImageSet:
    """Decode and validate an .npz archive; DataError says what is wrong and what was expected."""
    if not data:
        raise DataError("the file is empty", code="empty_file")
    buffer = io.BytesIO(data)
    if not zipfile.is_zipfile(buffer):
        hint = " (it is a single .npy array)" if data.startswith(b"\x93NUMPY") else ""
        raise DataError(f"not an .npz archive{hint}; expected np.savez(file, X=images, y=labels)")
    try:
        with zipfile.ZipFile(buffer) as archive:
            sizes = {info.filename: info.file_size for info in archive.infolist()}
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"not a readable .npz archive ({exc}); is it truncated?") from exc
    keys = sorted(name.removesuffix(".npy") for name in sizes)
    missing = [key for key in ("X", "y") if f"{key}.npy" not in sizes]
    if missing:
        raise DataError(
            f"the archive lacks {missing}; it holds {keys}, expected X (images) and y (labels)"
        )
    decoded = sum(sizes.get(f"{key}.npy", 0) for key in ("X", "y", "classes"))
    if decoded > MAX_DECODED_BYTES:
        raise DataError(
            f"X and y decode to {decoded} bytes, over the limit of {MAX_DECODED_BYTES}",
            code="too_large",
        )
    x = _load_member(buffer, "X")
    y = _load_member(buffer, "y")
    classes = _load_member(buffer, "classes") if "classes.npy" in sizes else None
    images = _images(x)
    labels = _labels(y, len(images), classes)
    return ImageSet(images=images, labels=labels, stored_dtype=str(x.dtype))


def to_npz_bytes(image_set: ImageSet, classes: list[Any] | None = None) -> bytes:
    """An .npz archive that `read_npz` reads back to the same data."""
    arrays: dict[str, np.ndarray] = {
        "X": image_set.images,
        "y": np.asarray(image_set.labels.astype(object).tolist()),
    }
    if classes is not None:
        arrays["classes"] = np.asarray(classes)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def load_builtin_images(
    name: str, start: int | None, stop: int | None, shuffle_seed: int | None
) -> tuple[ImageSet, list[Any]]:
    """A scikit-learn image dataset (digits: 8x8, one channel) and its full class list."""
    if name not in BUILTIN_IMAGE_SHAPES:
        raise DataError(
            f"{name} is not an image dataset; as_images works for {sorted(BUILTIN_IMAGE_SHAPES)}",
            code="not_images",
        )
    frame = load_builtin(name, start, stop, shuffle_seed)
    target = frame.pop("target")
    # sklearn orders pixel columns row by row (pixel_0_0, pixel_0_1, ...): a reshape restores them.
    images = frame.to_numpy(dtype=np.float32).reshape(len(frame), *BUILTIN_IMAGE_SHAPES[name])
    classes = [_plain(v) for v in target.cat.categories]
    labels = pd.Series(pd.Categorical(target, categories=classes), name=LABEL_COLUMN)
    return ImageSet(images=images, labels=labels, stored_dtype="float32"), classes


def fit_image_scaling(images: np.ndarray) -> dict[str, Any]:
    """Per-channel mean and std of NxCxHxW (or NxHxW) images, as a JSON-ready feature spec."""
    array = _as_nchw(images)
    mean, std = _channel_stats(array)
    shape = [int(side) for side in array.shape[1:]]
    return {
        "kind": "image",
        "shape": shape,
        "mean": mean,
        "std": std,
        "input_dim": int(np.prod(shape)),
    }


def refit_image_scaling(spec: dict[str, Any], images: np.ndarray) -> dict[str, Any]:
    """The same spec with mean and std refitted on `images` (e.g. the target's own data)."""
    array = _nchw_of_spec_shape(spec, images)
    mean, std = _channel_stats(array)
    return {**spec, "mean": mean, "std": std}


def transform_images(spec: dict[str, Any], images: np.ndarray) -> np.ndarray:
    """Standardise each channel and flatten: float32 (n, C·H·W), the layout models read."""
    array = _nchw_of_spec_shape(spec, images)
    mean = np.asarray(spec["mean"], dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(spec["std"], dtype=np.float32).reshape(1, -1, 1, 1)
    scaled = (array.astype(np.float32, copy=False) - mean) / std
    return scaled.reshape(len(array), -1)


def is_image_spec(spec: dict[str, Any]) -> bool:
    """Whether a fitted feature spec describes images (else it is a tabular spec)."""
    return spec.get("kind") == "image"


def instances_to_images(instances: list[Any], shape: list[int]) -> np.ndarray:
    """Prediction instances as float32 NxCxHxW.

    Each instance is CxHxW nested lists, HxW when C is 1, or C·H·W flat numbers.
    """
    channels, height, width = shape
    accepted = [(channels, height, width), (channels * height * width,)]
    if channels == 1:
        accepted.insert(1, (height, width))
    out = np.empty((len(instances), channels, height, width), dtype=np.float32)
    for index, instance in enumerate(instances):
        values: list[float] = []
        found = _nested_shape(instance, f"instance {index}", (), values)
        if found not in accepted:
            forms = ", ".join(_shape_text(form) for form in accepted)
            raise DataError(
                f"instance {index} has shape {_shape_text(found)}; expected one of {forms} "
                "(CxHxW, HxW for one channel, or flat)",
                code="feature_mismatch",
            )
        out[index] = np.asarray(values, dtype=np.float32).reshape(channels, height, width)
    return out


def _nested_shape(value: Any, label: str, path: tuple[int, ...], out: list[float]) -> tuple:
    """The shape of nested lists of numbers, appending the numbers to `out` in order."""
    where = label + "".join(f"[{i}]" for i in path)
    if isinstance(value, list):
        if len(path) >= 3:
            raise DataError(
                f"{where} nests lists more than 3 deep; expected CxHxW at most",
                code="feature_mismatch",
            )
        if not value:
            raise DataError(f"{where} is an empty list", code="feature_mismatch")
        first: tuple | None = None
        for i, item in enumerate(value):
            inner = _nested_shape(item, label, (*path, i), out)
            if first is None:
                first = inner
            elif inner != first:
                raise DataError(
                    f"{label}{''.join(f'[{p}]' for p in (*path, i))} is "
                    f"{_what(inner)} but {label}{''.join(f'[{p}]' for p in (*path, 0))} is "
                    f"{_what(first)}; every row must have the same length",
                    code="feature_mismatch",
                )
        assert first is not None
        return (len(value), *first)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DataError(f"{where}: expected a number, got {value!r}")
    if not math.isfinite(value):
        raise DataError(f"{where}: expected a finite number, got {value}")
    out.append(float(value))
    return ()


def _what(shape: tuple) -> str:
    return "a number" if not shape else f"an array of shape {_shape_text(shape)}"


def _shape_text(shape: Any) -> str:
    return "x".join(str(int(side)) for side in shape)


def _load_member(buffer: io.BytesIO, key: str) -> np.ndarray:
    buffer.seek(0)
    try:
        with np.load(buffer, allow_pickle=False) as archive:
            return np.asarray(archive[key])
    except ValueError as exc:
        if "pickle" in str(exc):
            raise DataError(
                f"{key} is an array of Python objects, which needs pickle and is refused; "
                "save numbers (or labels as a NumPy string array, e.g. np.array(labels, dtype=str))"
            ) from exc
        raise DataError(f"{key} is not a readable NumPy array ({exc})") from exc
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{key} is not a readable NumPy array ({exc}); is it truncated?") from exc


def _images(x: np.ndarray) -> np.ndarray:
    if x.dtype.kind not in _NUMERIC_KINDS:
        raise DataError(f"X holds {x.dtype} values; expected numbers (int, uint, float or bool)")
    if x.ndim == 3:
        x = x[:, np.newaxis]
    elif x.ndim != 4:
        raise DataError(
            f"X has shape {_shape_text(x.shape) or '()'} ({x.ndim}-D); "
            "expected NxHxW or NxCxHxW images"
        )
    count, channels, height, width = x.shape
    if count == 0:
        raise DataError("X holds no images (N is 0)", code="empty_file")
    if channels > MAX_CHANNELS:
        hint = ""
        if width <= 4:
            hint = "; if the images are channels-last (NxHxWxC), transpose them to NxCxHxW"
        raise DataError(f"X has {channels} channels, more than {MAX_CHANNELS}{hint}")
    if min(height, width) < 1 or max(height, width) > MAX_SIDE:
        raise DataError(
            f"images are {height}x{width}; each side must be between 1 and {MAX_SIDE} pixels"
        )
    with np.errstate(over="ignore"):  # values beyond float32 become inf, reported below
        images = x.astype(np.float32)
    bad = np.argwhere(~np.isfinite(images))
    if len(bad):
        at = ", ".join(str(int(i)) for i in bad[0])
        value = _plain(x[tuple(bad[0])])
        raise DataError(
            f"X[{at}] is {value!r}; expected finite numbers (no NaN or infinity, "
            "and within float32 range)"
        )
    return images


def _labels(y: np.ndarray, count: int, classes: np.ndarray | None) -> pd.Series:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"y has shape {_shape_text(y.shape) or '()'}; expected N labels (1-D)")
    if len(y) != count:
        raise DataError(f"X holds {count} images but y holds {len(y)} labels; expected the same N")
    if y.dtype.kind not in _LABEL_KINDS:
        raise DataError(f"y holds {y.dtype} values; expected numbers or strings")
    if y.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(y))
        if bad.size:
            raise DataError(f"y[{int(bad[0])}] is {y[bad[0]]}; expected a finite value")
    if classes is None:
        return pd.Series(y, name=LABEL_COLUMN)
    values = [_plain(v) for v in y.tolist()]
    if classes.ndim != 1 or classes.dtype.kind not in _LABEL_KINDS:
        raise DataError(
            f"classes has shape {classes.shape} of {classes.dtype}; expected 1-D labels"
        )
    declared = [_plain(v) for v in classes.tolist()]
    if len(set(declared)) != len(declared):
        raise DataError("classes lists a label more than once")
    known = set(declared)
    unknown = next((i for i, v in enumerate(values) if v not in known), None)
    if unknown is not None:
        raise DataError(f"y[{unknown}] is {values[unknown]!r}, which is not in classes {declared}")
    return pd.Series(pd.Categorical(values, categories=declared), name=LABEL_COLUMN)


def _nchw_of_spec_shape(spec: dict[str, Any], images: np.ndarray) -> np.ndarray:
    array = _as_nchw(images)
    if list(array.shape[1:]) != list(spec["shape"]):
        raise DataError(
            f"images have shape {_shape_text(array.shape[1:])}; "
            f"expected {_shape_text(spec['shape'])}",
            code="feature_mismatch",
        )
    return array


def _as_nchw(images: np.ndarray) -> np.ndarray:
    array = np.asarray(images)
    if array.ndim == 3:
        return array[:, np.newaxis]
    if array.ndim != 4:
        raise ValueError(f"expected NxHxW or NxCxHxW images, got shape {array.shape}")
    return array


def _channel_stats(array: np.ndarray) -> tuple[list[float], list[float]]:
    if len(array) == 0:
        raise DataError("there are no images to fit the scaling on")
    values = array.astype(np.float64, copy=False)
    mean = values.mean(axis=(0, 2, 3))
    std = values.std(axis=(0, 2, 3))
    # A constant channel (e.g. a blank border colour) is left unscaled rather than divided by 0.
    std = np.where(np.isfinite(std) & (std > 0), std, 1.0)
    return [float(v) for v in mean], [float(v) for v in std]


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
