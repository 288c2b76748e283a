"""Bulk predict bodies parsed straight to a matrix: the same numbers as the general parser,
and every body it cannot vouch for handed back (None) to the general parser."""

import json

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.serving import dense
from app.serving.dense import dense_instances


@pytest.fixture(autouse=True)
def _any_size(monkeypatch: pytest.MonkeyPatch) -> None:
    # The size floor is a speed choice; these tests are about what the parser accepts.
    monkeypatch.setattr(dense, "MIN_BODY_BYTES", 0)


def _general(body: bytes) -> np.ndarray:
    return np.array(orjson.loads(body)["instances"], dtype=np.float64)


NUMBERS = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    rows = draw(st.integers(1, 12))
    width = draw(st.integers(1, 6))
    matrix = [[draw(NUMBERS) for _ in range(width)] for _ in range(rows)]
    style = draw(st.sampled_from(["compact", "default", "indent", "tabs"]))
    if style == "compact":
        return json.dumps({"instances": matrix}, separators=(",", ":")).encode()
    if style == "default":
        return json.dumps({"instances": matrix}).encode()
    if style == "indent":
        return json.dumps({"instances": matrix}, indent=2).encode()
    return b"\r\n\t" + json.dumps({"instances": matrix}, indent="\t").encode() + b" \n"


class TestAccepted:
    @settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
    @given(bodies())
    def test_same_numbers_as_the_general_parser(self, body: bytes) -> None:
        matrix = dense_instances(body)
        assert matrix is not None
        expected = _general(body)
        assert matrix.dtype == np.float64 and matrix.shape == expected.shape
        np.testing.assert_array_equal(matrix, expected)

    def test_a_large_body(self) -> None:
        rows = np.round(np.random.default_rng(0).normal(5, 2, size=(10_000, 4)), 4)
        body = json.dumps({"instances": rows.tolist()}).encode()
        matrix = dense_instances(body)
        assert matrix is not None
        np.testing.assert_array_equal(matrix, rows)

    def test_signed_zero_and_subnormals_survive(self) -> None:
        matrix = dense_instances(b'{"instances": [[-0.0, 5e-324, 1E+2, -1.5e-3]]}')
        assert matrix is not None
        assert np.signbit(matrix[0, 0]) and matrix[0, 1] == 5e-324
        assert matrix[0, 2:].tolist() == [100.0, -0.0015]


class TestHandedBack:
    @pytest.mark.parametrize(
        "body",
        [
            # Shapes: ragged rows (same total, too), nesting, bare numbers, empty rows.
            b'{"instances": [[1, 2, 3], [4, 5, 6, 7, 8]]}',
            b'{"instances": [[1, 2], [3, 4, 5], [6]]}',
            b'{"instances": [[1, [2]], [3, 4]]}',
            b'{"instances": [[[1, 2]], [[3, 4]]]}',
            b'{"instances": [[1, 2], 3, 4]}',
            b'{"instances": [1, 2]}',
            b'{"instances": [[1], [], [2, 3]]}',
            b'{"instances": [[], []]}',
            b'{"instances": []}',
            # Values that are not plain numbers.
            b'{"instances": [[1, "2"]]}',
            b'{"instances": [[1, true]]}',
            b'{"instances": [[1, null]]}',
            b'{"instances": [[1, {"a": 2}]]}',
            b'{"instances": [[1, 123456789012345678901234567890]]}',
            b'{"instances": [[1, 1e400]]}',
            b'{"instances": [[1, NaN]]}',
            b'{"instances": [[1, Infinity]]}',
            # Other bodies.
            b'{"instances": [[1, 2]], "extra": 1}',
            b'{"instances": [[1, 2]], "instances": [[3, 4]]}',
            b'{"records": [{"a": 1}]}',
            b'{"instances": {"a": 1}}',
            b'{"instances": null}',
            b'{"instances": [[1, 2]]',
            b'{"instances": [[1, 2]]} trailing',
            b'{"instances": [[1, 2],]}',
            b'{"instances": [[1 2]]}',
            b"[[1, 2]]",
            b"",
        ],
    )
    def test_bodies_it_cannot_vouch_for(self, body: bytes) -> None:
        assert dense_instances(body) is None

    def test_small_bodies_are_left_to_the_general_parser(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(dense, "MIN_BODY_BYTES", 4096)
        assert dense_instances(b'{"instances": [[1, 2]]}') is None
        big = json.dumps({"instances": [[1.5, 2.5]] * 400}).encode()
        assert len(big) > 4096 and dense_instances(big) is not None

    def test_a_refused_body_leaves_the_parser_usable(self) -> None:
        assert dense_instances(b'{"instances": [[1, "2"]]}') is None
        assert dense_instances(b'{"instances": [[1, 2], [3, 4, 5]]}') is None
        matrix = dense_instances(b'{"instances": [[1, 2], [3, 4]]}')
        assert matrix is not None and matrix.tolist() == [[1.0, 2.0], [3.0, 4.0]]

    def test_bodies_beyond_the_reused_parser_get_their_own(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(dense, "REUSED_PARSER_MAX_BYTES", 16)
        matrix = dense_instances(b'{"instances": [[1, 2], [3, 4]]}')
        assert matrix is not None and matrix.shape == (2, 2)
