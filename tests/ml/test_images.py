import io
import zipfile
from typing import Any

import numpy as np
import pandas as pd
import pytest

from app.ml.errors import DataError
from app.ml.frames import DecodeLimits
from app.ml.images import (
    MAX_CHANNELS,
    fit_image_scaling,
    instances_to_images,
    load_builtin_images,
    read_npz,
    refit_image_scaling,
    to_npz_bytes,
    transform_images,
)


def npz(**arrays: Any) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def gray(n: int = 6, side: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, side, side), dtype=np.uint8)


class TestReadNpz:
    def test_three_d_images_gain_a_channel_axis(self) -> None:
        x = gray()
        data = read_npz(npz(X=x, y=np.arange(6) % 2))
        assert data.images.dtype == np.float32
        assert data.images.shape == (6, 1, 4, 4)
        assert np.array_equal(data.images[:, 0], x.astype(np.float32))
        assert data.shape == [1, 4, 4]
        assert data.labels.tolist() == [0, 1, 0, 1, 0, 1]
        assert data.columns() == [
            {"name": "image", "dtype": "uint8", "shape": [1, 4, 4]},
            {"name": "y", "dtype": "int64"},
        ]

    def test_four_d_images_and_text_labels(self) -> None:
        x = np.random.default_rng(1).normal(size=(3, 3, 5, 7))
        data = read_npz(npz(X=x, y=np.array(["cat", "dog", "cat"])))
        assert data.images.shape == (3, 3, 5, 7)
        assert data.labels.tolist() == ["cat", "dog", "cat"]
        assert data.columns()[1] == {"name": "y", "dtype": "string"}

    def test_a_column_vector_of_labels_is_accepted(self) -> None:
        data = read_npz(npz(X=gray(n=2), y=np.array([[3], [4]])))
        assert data.labels.tolist() == [3, 4]

    def test_declared_classes_keep_the_full_label_space(self) -> None:
        data = read_npz(npz(X=gray(n=2), y=np.array([1, 1]), classes=np.array([0, 1, 2])))
        assert isinstance(data.labels.dtype, pd.CategoricalDtype)
        assert list(data.labels.cat.categories) == [0, 1, 2]

    def test_round_trip_through_to_npz_bytes(self) -> None:
        data = read_npz(npz(X=gray(), y=np.array(list("abcabc"))))
        again = read_npz(to_npz_bytes(data, ["a", "b", "c", "d"]))
        assert np.array_equal(again.images, data.images)
        assert again.labels.tolist() == data.labels.tolist()
        assert list(again.labels.cat.categories) == ["a", "b", "c", "d"]

    @pytest.mark.parametrize(
        ("content", "message"),
        [
            (b"", "empty"),
            (b"X,y\n1,2\n", "not an .npz archive"),
            (b"\x93NUMPY" + b"\x00" * 20, "single .npy array"),
            (b"PK\x03\x04garbage", "not an .npz archive"),
        ],
    )
    def test_files_that_are_not_archives(self, content: bytes, message: str) -> None:
        with pytest.raises(DataError, match=message):
            read_npz(content)

    def test_a_truncated_archive(self) -> None:
        data = npz(X=gray(n=200, side=16), y=np.zeros(200))
        with pytest.raises(DataError, match=r"not a readable|truncated"):
            read_npz(data[: len(data) // 2] + data[-100:])

    @pytest.mark.parametrize(
        ("arrays", "message"),
        [
            ({"images": gray(), "y": np.zeros(6)}, r"lacks \['X'\].*holds \['images', 'y'\]"),
            ({"X": gray()}, r"lacks \['y'\]"),
            ({"X": gray(n=6), "y": np.zeros(5)}, "6 images but y holds 5 labels"),
            ({"X": np.zeros((6, 4)), "y": np.zeros(6)}, r"shape 6x4 \(2-D\); expected N"),
            ({"X": np.zeros((2, 1, 4, 4, 1)), "y": np.zeros(2)}, r"5-D"),
            ({"X": np.zeros((0, 4, 4)), "y": np.zeros(0)}, "no images"),
            ({"X": np.full((2, 4, 4), "a"), "y": np.zeros(2)}, "expected numbers"),
            ({"X": np.zeros((2, 4, 4), dtype=complex), "y": np.zeros(2)}, "expected numbers"),
            ({"X": gray(n=2), "y": np.zeros((2, 2))}, "expected N labels"),
            ({"X": gray(n=2), "y": np.array([1.0, np.nan])}, r"y\[1\] is nan"),
            ({"X": gray(n=2), "y": np.array([1, 3]), "classes": np.array([1, 2])}, "not in"),
            ({"X": gray(n=2), "y": np.array([1, 1]), "classes": np.array([1, 1])}, "more than"),
            (
                {"X": np.zeros((2, MAX_CHANNELS + 1, 8, 3)), "y": np.zeros(2)},
                "channels-last",
            ),
            ({"X": np.zeros((1, 1, 1, 2000), dtype=np.uint8), "y": np.zeros(1)}, "each side"),
        ],
    )
    def test_invalid_contents_are_named(self, arrays: dict[str, Any], message: str) -> None:
        with pytest.raises(DataError, match=message):
            read_npz(npz(**arrays))

    def test_non_finite_pixels_are_located(self) -> None:
        x = np.zeros((3, 2, 4, 4))
        x[2, 1, 0, 3] = np.inf
        with pytest.raises(DataError, match=r"X\[2, 1, 0, 3\] is .*inf.*finite"):
            read_npz(npz(X=x, y=np.zeros(3)))
        x[2, 1, 0, 3] = 1e300  # finite, but not as float32
        with pytest.raises(DataError, match="float32 range"):
            read_npz(npz(X=x, y=np.zeros(3)))

    def test_object_arrays_are_refused_without_unpickling(self) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, X=gray(n=2), y=np.array([{"a": 1}, None], dtype=object))
        with pytest.raises(DataError, match="pickle"):
            read_npz(buffer.getvalue())

    def test_archives_that_decode_too_large_are_refused(self) -> None:
        buffer = io.BytesIO()
        # Zeros compress to almost nothing: the limit must look at the decoded size.
        np.savez_compressed(buffer, X=np.zeros((100, 8, 8)), y=np.zeros(100))
        assert len(buffer.getvalue()) < 1000
        with pytest.raises(DataError, match="over the limit of 1000") as caught:
            read_npz(buffer.getvalue(), DecodeLimits(max_decoded_bytes=1000))
        assert caught.value.code == "too_large"

    def test_extra_arrays_are_ignored(self) -> None:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for key, array in {"X": gray(n=2), "y": np.zeros(2), "notes": np.ones(3)}.items():
                member = io.BytesIO()
                np.save(member, array)
                archive.writestr(f"{key}.npy", member.getvalue())
        assert read_npz(buffer.getvalue()).images.shape == (2, 1, 4, 4)


class TestScaling:
    def test_fit_gives_per_channel_statistics(self) -> None:
        x = np.stack([np.full((4, 4), 2.0), np.arange(16.0).reshape(4, 4)])[None].repeat(3, 0)
        spec = fit_image_scaling(x)
        assert spec["kind"] == "image"
        assert spec["shape"] == [2, 4, 4]
        assert spec["input_dim"] == 32
        assert spec["mean"] == pytest.approx([2.0, 7.5])
        # A constant channel is left unscaled instead of dividing by zero.
        assert spec["std"] == pytest.approx([1.0, float(np.arange(16.0).std())])

    def test_transform_standardises_and_flattens(self) -> None:
        x = np.random.default_rng(0).normal(3.0, 2.0, size=(50, 3, 4, 5))
        spec = fit_image_scaling(x)
        out = transform_images(spec, x)
        assert out.dtype == np.float32
        assert out.shape == (50, 60)
        per_channel = out.reshape(50, 3, 4, 5)
        assert per_channel.mean(axis=(0, 2, 3)) == pytest.approx([0, 0, 0], abs=1e-5)
        assert per_channel.std(axis=(0, 2, 3)) == pytest.approx([1, 1, 1], abs=1e-4)

    def test_transform_accepts_n_h_w_for_one_channel(self) -> None:
        x = gray().astype(np.float64)
        spec = fit_image_scaling(x)
        assert np.array_equal(transform_images(spec, x), transform_images(spec, x[:, None]))

    def test_refit_keeps_the_shape_and_replaces_the_statistics(self) -> None:
        source = np.random.default_rng(0).normal(0.0, 1.0, size=(40, 1, 4, 4))
        target = source * 3.0 + 10.0
        spec = fit_image_scaling(source)
        refitted = refit_image_scaling(spec, target)
        assert refitted["shape"] == spec["shape"]
        assert refitted["input_dim"] == spec["input_dim"]
        assert refitted["mean"][0] == pytest.approx(spec["mean"][0] * 3.0 + 10.0)
        assert refitted["std"][0] == pytest.approx(spec["std"][0] * 3.0)
        assert np.allclose(
            transform_images(refitted, target), transform_images(spec, source), atol=1e-5
        )
        assert spec["mean"] != refitted["mean"]  # the original is not modified

    def test_shape_mismatch(self) -> None:
        spec = fit_image_scaling(gray(side=4))
        with pytest.raises(DataError, match="shape 1x5x5; expected 1x4x4"):
            transform_images(spec, gray(side=5))
        with pytest.raises(DataError, match="expected 1x4x4"):
            refit_image_scaling(spec, gray(side=5))


class TestInstances:
    SHAPE = [1, 2, 3]

    def test_accepted_forms_give_the_same_images(self) -> None:
        hw = [[1, 2, 3], [4, 5, 6.5]]
        out = instances_to_images([[hw], hw, [1, 2, 3, 4, 5, 6.5]], self.SHAPE)
        assert out.shape == (3, 1, 2, 3)
        assert out.dtype == np.float32
        assert (out == out[0]).all()
        assert out[0, 0, 1, 2] == 6.5

    def test_several_channels_need_c_h_w_or_flat(self) -> None:
        shape = [2, 1, 2]
        assert instances_to_images([[[[1, 2]], [[3, 4]]]], shape).ravel().tolist() == [1, 2, 3, 4]
        assert instances_to_images([[1, 2, 3, 4]], shape).ravel().tolist() == [1, 2, 3, 4]
        with pytest.raises(DataError, match="expected one of 2x1x2, 4"):
            instances_to_images([[[1, 2], [3, 4]]], shape)

    @pytest.mark.parametrize(
        ("instance", "message"),
        [
            ([[1, 2, 3]], r"instance 0 has shape 1x3; expected one of 1x2x3, 2x3, 6"),
            ([1, 2, 3, 4, 5], "has shape 5;"),
            ([[1, 2, 3], [4, 5]], r"instance 0\[1\] is an array of shape 2 but instance 0\[0\]"),
            ([[1, 2, 3], 4], r"instance 0\[1\] is a number but"),
            ([[[[[1]]]]], "more than 3 deep"),
            ([[1, 2, 3], []], r"instance 0\[1\] is an empty list"),
            ([[1, 2, "x"], [4, 5, 6]], r"instance 0\[0\]\[2\]: expected a number, got 'x'"),
            ([[1, 2, True], [4, 5, 6]], "expected a number, got True"),
            ([[1, 2, None], [4, 5, 6]], "expected a number, got None"),
            ([[1, 2, float("nan")], [4, 5, 6]], "expected a finite number"),
        ],
    )
    def test_wrong_instances_are_located(self, instance: Any, message: str) -> None:
        with pytest.raises(DataError, match=message):
            instances_to_images([instance], self.SHAPE)
        # After a valid instance the message names instance 1.
        with pytest.raises(DataError, match=message.replace("instance 0", "instance 1")):
            instances_to_images([[[1, 2, 3], [4, 5, 6]], instance], self.SHAPE)


def test_builtin_digits_as_images_match_sklearn() -> None:
    from sklearn.datasets import load_digits

    data, classes = load_builtin_images("digits", 10, 20, None)
    assert classes == list(range(10))
    assert data.images.shape == (10, 1, 8, 8)
    assert np.array_equal(data.images[:, 0], load_digits().images[10:20].astype(np.float32))
    assert data.labels.tolist() == load_digits().target[10:20].tolist()
    with pytest.raises(DataError, match="not an image dataset"):
        load_builtin_images("iris", None, None, None)
