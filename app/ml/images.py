"""Image datasets: reading .npz archives, per-channel scaling, and image inputs for prediction.

An image dataset is an .npz archive holding `X` (NxHxW or NxCxHxW numbers) and `y` (N labels
or values), optionally `classes` (the full label space, in order). Images are kept as float32
NxCxHxW; models read them flattened to Nx(C·H·W), so the training loop, the row splits and
the strategies treat them like any other feature matrix.

Everything about the .npz image format (reading under bounds, scaling, prediction
inputs) in one place, as frames.py is for tables.
"""

import io
import math
import zipfile
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from app.ml.errors import DataError
from app.ml.frames import (
    CHUNK_BYTES,
    BoundExceeded,
    DecodeLimits,
    Source,
    as_stream,
    column_dtype,
    load_builtin,
)

IMAGE_COLUMN = "image"
LABEL_COLUMN = "y"
MAX_CHANNELS = 16
MAX_SIDE = 1024

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


def read_npz(source: Source, limits: DecodeLimits | None = None) -> ImageSet:
    """Decode and validate an .npz archive; DataError says what is wrong and what was expected.

    Bounded before anything is allocated: the zip directory's sizes of X, y and classes, then
    each array's .npy header (shape and dtype) against `limits` (default: DecodeLimits()).
    """
    stream = as_stream(source)
    limits = limits or DecodeLimits()
    budget = limits.max_decoded_bytes
    stream.seek(0)
    head = stream.read(8)
    if not head:
        raise DataError("the file is empty", code="empty_file")
    stream.seek(0)
    if not zipfile.is_zipfile(stream):
        hint = " (it is a single .npy array)" if head.startswith(b"\x93NUMPY") else ""
        raise DataError(f"not an .npz archive{hint}; expected np.savez(file, X=images, y=labels)")
    stream.seek(0)
    try:
        archive = zipfile.ZipFile(stream)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise DataError(f"not a readable .npz archive ({exc}); is it truncated?") from exc
    with archive:
        members = {info.filename: info for info in archive.infolist()}
        keys = sorted(name.removesuffix(".npy") for name in members)
        missing = [key for key in ("X", "y") if f"{key}.npy" not in members]
        if missing:
            raise DataError(
                f"the archive lacks {missing}; it holds {keys[:20]}, "
                "expected X (images) and y (labels)"
            )
        wanted = [key for key in ("X", "y", "classes") if f"{key}.npy" in members]
        decoded = sum(max(members[f"{key}.npy"].file_size, 0) for key in wanted)
        if decoded > budget:
            raise BoundExceeded(
                f"X and y decode to {decoded} bytes, over the limit of {budget}",
                "max_decoded_bytes",
            )
        x = _load_member(archive, members["X.npy"], "X", limits, budget)
        budget -= x.nbytes + 4 * x.size  # X and its float32 copy
        y = _load_member(archive, members["y.npy"], "y", limits, budget)
        budget -= y.nbytes
        classes = None
        if "classes.npy" in members:
            classes = _load_member(archive, members["classes.npy"], "classes", limits, budget)
    stored_dtype = str(x.dtype)
    images = _images(x)
    del x
    labels = _labels(y, len(images), classes)
    return ImageSet(images=images, labels=labels, stored_dtype=stored_dtype)


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


def _load_member(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, key: str, limits: DecodeLimits, budget: int
) -> np.ndarray:
    """One array of the archive, allocated only once its header's shape and dtype fit `budget`."""
    try:
        with archive.open(info) as member:
            shape, fortran_order, dtype = _npy_header(member, key)
            count = math.prod(shape)  # Python ints: a crafted shape cannot overflow
            nbytes = count * dtype.itemsize
            if key in ("X", "y") and shape and shape[0] > limits.max_dataset_rows:
                raise BoundExceeded(
                    f"{key} holds {shape[0]} rows, over the limit of {limits.max_dataset_rows}",
                    "max_dataset_rows",
                )
            # X is also kept as float32 images: both copies live at once while it converts.
            needed = nbytes + (4 * count if key == "X" else 0)
            if needed > budget:
                copies = " with its float32 copy" if key == "X" else ""
                raise BoundExceeded(
                    f"{key} declares shape {_shape_text(shape) or '()'} of {dtype}, "
                    f"{needed} bytes{copies}, over the limit of {max(budget, 0)}",
                    "max_decoded_bytes",
                )
            available = info.file_size - member.tell()
            if nbytes > available:
                raise DataError(
                    f"{key} declares shape {_shape_text(shape) or '()'} of {dtype} ({nbytes} "
                    f"bytes) but holds {max(available, 0)}; is it truncated?"
                )
            data = bytearray(nbytes)
            view = memoryview(data)
            filled = 0
            while filled < nbytes:
                piece = member.read(min(CHUNK_BYTES, nbytes - filled))
                if not piece:
                    raise DataError(
                        f"{key} ends after {filled} of {nbytes} bytes; is it truncated?"
                    )
                view[filled : filled + len(piece)] = piece
                filled += len(piece)
    except DataError:
        raise
    except (
        zipfile.BadZipFile,
        zlib.error,
        OSError,
        EOFError,
        ValueError,
        NotImplementedError,  # a compression method zipfile lacks
        RuntimeError,  # an encrypted member
    ) as exc:
        raise DataError(f"{key} is not a readable NumPy array ({exc}); is it truncated?") from exc
    array = np.frombuffer(data, dtype=dtype, count=count) if count else np.empty(0, dtype=dtype)
    array = array.reshape(shape, order="F" if fortran_order else "C")
    _check_text_cells(array, key, limits.max_cell_bytes)
    return array


def _npy_header(member: Any, key: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """The shape, Fortran order and dtype of a .npy stream, read from its header alone."""
    try:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(member)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(member)
        else:
            raise DataError(
                f"{key} is a version {version[0]}.{version[1]} .npy file; "
                "expected version 1.0 or 2.0, as np.savez writes for numbers and labels"
            )
    except (ValueError, SyntaxError, TypeError) as exc:
        raise DataError(f"{key} is not a readable NumPy array ({exc})") from exc
    if dtype.hasobject:
        raise DataError(
            f"{key} is an array of Python objects, which needs pickle and is refused; "
            "save numbers (or labels as a NumPy string array, e.g. np.array(labels, dtype=str))"
        )
    if any(side < 0 for side in shape):
        raise DataError(f"{key} declares the shape {shape}; sides cannot be negative")
    if dtype.itemsize == 0:
        raise DataError(f"{key} holds values of {dtype}, which take no bytes; expected numbers")
    return tuple(int(side) for side in shape), bool(fortran_order), dtype


def _check_text_cells(array: np.ndarray, key: str, limit: int) -> None:
    """BoundExceeded for a text label longer than `limit` UTF-8 bytes."""
    # A str element of itemsize bytes holds itemsize/4 characters, at most 4 bytes each.
    if array.dtype.kind != "U" or array.dtype.itemsize <= limit:
        return
    flat = array.reshape(-1)
    lengths = np.char.str_len(flat)
    for index in np.flatnonzero(lengths.astype(np.int64) * 4 > limit):
        size = len(str(flat[index]).encode("utf-8", "surrogatepass"))
        if size > limit:
            raise BoundExceeded(
                f"{key}[{int(index)}] is a label of {size} bytes, over the limit of {limit}",
                "max_cell_bytes",
            )


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
