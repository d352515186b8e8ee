"""k-NN verbose jsonlines: writer/reader round trips, ragged rows, errors with line numbers."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from recpipe.formats import read_verbose_jsonlines, write_verbose_jsonlines
from recpipe.formats.exceptions import KnnOutputError


@pytest.mark.parametrize(("n", "k"), [(1, 1), (10, 5), (300, 40), (9000, 2)])
def test_round_trip_and_json_shape(n: int, k: int) -> None:
    rng = np.random.default_rng(n)
    labels = rng.integers(0, 50_000, (n, k))
    distances = np.sort(rng.normal(size=(n, k)).astype(np.float32), axis=1)
    buf = io.BytesIO()
    write_verbose_jsonlines(buf, labels, distances, labels[:, 0])
    lines = buf.getvalue().decode().splitlines()
    assert len(lines) == n
    first = json.loads(lines[0])
    assert list(first) == ["predicted_label", "labels", "distances"]
    assert first["labels"] == [float(x) for x in labels[0]] and first["predicted_label"] == float(
        labels[0, 0]
    )
    got_labels, got_distances = read_verbose_jsonlines(buf.getvalue())
    assert got_labels.dtype == np.int64 and got_distances.dtype == np.float32
    np.testing.assert_array_equal(got_labels, labels)
    np.testing.assert_array_equal(got_distances, distances)


def test_ragged_rows_are_padded_and_key_order_does_not_matter() -> None:
    text = (
        b'{"predicted_label": 1.0, "labels": [1.0, 2.0, 3.0], "distances": [0.5, 0.7, 0.9]}\n'
        b'{"distances": [0.1], "labels": [7.0], "predicted_label": 7.0}\n'
        b'{"predicted_label": 0.0, "labels": [], "distances": []}\n\n'
    )
    labels, distances = read_verbose_jsonlines(io.BytesIO(text))
    np.testing.assert_array_equal(labels, [[1, 2, 3], [7, -1, -1], [-1, -1, -1]])
    np.testing.assert_array_equal(distances[0], np.array([0.5, 0.7, 0.9], np.float32))
    assert np.isnan(distances[1, 1:]).all() and np.isnan(distances[2]).all()


def test_empty_input() -> None:
    labels, distances = read_verbose_jsonlines(b"")
    assert labels.shape == (0, 0) and distances.shape == (0, 0)


_OK = b'{"predicted_label": 1.0, "labels": [1.0, 2.0], "distances": [0.5, 0.7]}\n'


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (b"{oops\n", r"line 3 is not valid JSON"),
        (b"[1, 2]\n", r"line 3 is not a JSON object"),
        (b'{"labels": [1.0]}\n', r"line 3 has no \['distances'\]"),
        (b'{"labels": [1.0, 2.0], "distances": [0.1]}\n', r"line 3: 'labels' \(2\) and 'distances' \(1\)"),
        (
            b'{"labels": ["a"], "distances": [0.1]}\n',
            r"line 3: 'labels' and 'distances' must be lists of numbers",
        ),
        (b'{"labels": [1.5], "distances": [0.1]}\n', r"line 3: 'labels' must be integral"),
    ],
)
def test_malformed_lines_name_the_line(bad: bytes, message: str) -> None:
    with pytest.raises(KnnOutputError, match=message):
        read_verbose_jsonlines(_OK + _OK + bad + _OK)


def test_writer_shape_errors() -> None:
    with pytest.raises(KnnOutputError, match=r"must both be \(n, k\)"):
        write_verbose_jsonlines(io.BytesIO(), np.zeros((2, 3)), np.zeros((2, 2)), np.zeros(2))
    with pytest.raises(KnnOutputError, match=r"predicted_label must have shape \(2,\)"):
        write_verbose_jsonlines(io.BytesIO(), np.zeros((2, 3)), np.zeros((2, 3)), np.zeros(3))


def test_formats_package_import_is_lazy() -> None:
    import subprocess
    import sys

    code = (
        "import sys, recpipe.formats; "
        "print('numpy' in sys.modules, 'recpipe.formats.recordio' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def _json_reference(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """The plain reading: json.loads per line, labels int64, distances float32, padded."""
    records = [json.loads(line) for line in data.splitlines() if line.strip()]
    k = max((len(r["labels"]) for r in records), default=0)
    labels = np.full((len(records), k), -1, np.int64)
    distances = np.full((len(records), k), np.nan, np.float32)
    for i, r in enumerate(records):
        labels[i, : len(r["labels"])] = np.asarray(r["labels"], np.float64).astype(np.int64)
        distances[i, : len(r["distances"])] = np.asarray(r["distances"], np.float32)
    return labels, distances


def _random_distances(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    scale = 10.0 ** rng.integers(-12, 12, shape)
    values = (rng.normal(size=shape) * scale).astype(np.float32)
    values[rng.random(shape) < 0.05] = 0.0
    values[rng.random(shape) < 0.02] = -0.0
    bits = rng.integers(0, 2**32, shape, dtype=np.uint64).astype(np.uint32).view(np.float32)
    pick = rng.random(shape) < 0.2  # arbitrary bit patterns: subnormals, huge, NaN, infinities
    values[pick] = bits[pick]
    return values


def _assert_same(got: tuple[np.ndarray, np.ndarray], want: tuple[np.ndarray, np.ndarray]) -> None:
    np.testing.assert_array_equal(got[0], want[0])
    assert got[1].dtype == np.float32
    np.testing.assert_array_equal(got[1].view(np.uint32), want[1].view(np.uint32))  # bit for bit


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_writer_output_reads_back_bit_for_bit(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, k = 300, 25
    labels = rng.integers(-1, 2**40, (n, k))
    distances = _random_distances(rng, (n, k))
    distances[distances != distances] = np.nan  # one NaN spelling
    predicted = np.where(rng.random(n) < 0.1, np.nan, labels[:, 0]).astype(np.float32)
    buf = io.BytesIO()
    write_verbose_jsonlines(buf, labels, distances, predicted)
    want = _json_reference(buf.getvalue())
    np.testing.assert_array_equal(want[0], labels)
    np.testing.assert_array_equal(want[1].view(np.uint32), distances.view(np.uint32))
    _assert_same(read_verbose_jsonlines(buf.getvalue()), want)


@pytest.mark.parametrize(
    "order", [("predicted_label", "labels", "distances"), ("distances", "labels", "predicted_label")]
)
@pytest.mark.parametrize("separators", [(", ", ": "), (",", ":")])
def test_json_dumps_texts_read_as_json_loads_does(
    order: tuple[str, ...], separators: tuple[str, str]
) -> None:
    """Other writers' spelling (Python float reprs, up to 17 digits, exponents, other key orders,
    no spaces) gives json.loads' numbers."""
    rng = np.random.default_rng(len(order[0]) + len(separators[0]))
    n, k = 200, 30
    labels = rng.integers(0, 10**6, (n, k)).astype(np.float64)
    distances = np.sort(rng.gamma(1.0, 3.0, (n, k)), axis=1).astype(np.float32)
    distances[:, 0] *= 10.0 ** rng.integers(-9, 0, n)  # 1e-05 and 0.00123... spellings
    distances[:5, 0] = 0.0
    lines = []
    for i in range(n):
        record = {
            "predicted_label": float(labels[i, 0]),
            "labels": labels[i].tolist(),
            "distances": distances[i].astype(np.float64).tolist(),
        }
        lines.append(json.dumps({key: record[key] for key in order}, separators=separators))
    data = ("\n".join(lines) + "\n").encode()
    want = _json_reference(data)
    _assert_same(read_verbose_jsonlines(data), want)
    np.testing.assert_array_equal(want[1], distances)


def _record(label: int) -> bytes:
    return b'{"predicted_label": %d.0, "labels": [%d.0, 2.0], "distances": [0.5, 0.75]}' % (label, label)


@pytest.mark.parametrize(
    ("layout", "records"),
    [
        # AssembleWith=Line after MultiRecord responses that already end with a newline
        (lambda recs: b"".join(r + b"\n\n" for r in recs), 5),
        (lambda recs: b"\n\n" + b"\n".join(recs) + b"\n\n\n", 5),
        (lambda recs: b"\r\n".join(recs) + b"\r\n\r\n", 5),
        (lambda recs: b"\n \t\n".join(recs), 3),
        (lambda recs: b"\n".join(recs), 1),  # no newline at the end
    ],
)
def test_blank_lines_anywhere_are_skipped(layout: object, records: int) -> None:
    text = layout([_record(i) for i in range(records)])  # type: ignore[operator]
    labels, distances = read_verbose_jsonlines(text)
    np.testing.assert_array_equal(labels, [[i, 2] for i in range(records)])
    np.testing.assert_array_equal(distances, np.array([[0.5, 0.75]] * records, np.float32))


def test_transform_output_with_a_newline_after_every_record_reads_as_without() -> None:
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 1000, (5000, 3))
    distances = np.sort(rng.random((5000, 3)).astype(np.float32), axis=1)
    buf = io.BytesIO()
    write_verbose_jsonlines(buf, labels, distances, labels[:, 0])
    doubled = buf.getvalue().replace(b"\n", b"\n\n")
    got = read_verbose_jsonlines(doubled)
    np.testing.assert_array_equal(got[0], labels)
    np.testing.assert_array_equal(got[1], distances)


def test_line_numbers_count_blank_lines_and_name_the_file(tmp_path: Path) -> None:
    good = _record(1) + b"\n"
    path = tmp_path / "users-0000000000-0000000004.pbr.out"
    # physical lines: 1 blank, 2 good, 3 blank, 4 good, 5 blank, 6 bad
    path.write_bytes(b"\n" + good + b"\n" + good + b"\n" + b'{"labels": [1.5], "distances": [0.1]}\n')
    with pytest.raises(KnnOutputError, match=rf"'{path}' line 6: 'labels' must be integral"):
        read_verbose_jsonlines(path)


def test_line_numbers_stay_right_past_the_first_block() -> None:
    lines = [_record(1)] * 10_000
    lines[9_000] = b'{"labels": [1.0], "distances": [0.1'
    text = b"\n\n".join(lines)  # record i on line 2 * i + 1
    with pytest.raises(KnnOutputError, match=r"input line 18001 is not valid JSON"):
        read_verbose_jsonlines(text)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (b'{"labels": [1.0, null], "distances": [0.5, 0.7]}', "must be lists of numbers"),
        (b'{"labels": [1.0, "2"], "distances": [0.5, 0.7]}', "must be lists of numbers"),
        (b'{"labels": [1.0, [2.0]], "distances": [0.5, 0.7]}', "must be lists of numbers"),
        (b'{"labels": 3, "distances": 4}', "must be lists of numbers"),
        (b'{"labels": [1.0, 2.0], "distances": [0.5, 0.7, 0.9]}', r"'labels' \(2\) and 'distances' \(3\)"),
        (b'{"labels": [1.0, 1e300], "distances": [0.5, 0.7]}', "must be integral"),
        (b'{"predicted_label": 1.0, "labels": [1.0, 2.0], "distances": [0.5 0.7]}', "not valid JSON"),
        (b'{"predicted_label": 1.0, "labels": [1.0, 2.0], "distances": [+1, 0.7]}', "not valid JSON"),
    ],
)
def test_malformed_values_name_the_line(bad: bytes, message: str) -> None:
    good = _record(1) + b"\n"
    with pytest.raises(KnnOutputError, match=rf"line 3\b.*{message}"):
        read_verbose_jsonlines(good * 2 + bad + b"\n" + good)


@pytest.mark.parametrize(
    ("labels_text", "expected"),
    [(b"[3, 40, -1]", [3, 40, -1]), (b"[3.0, 4e1, -1.0]", [3, 40, -1]), (b"[3.00, 4.0E+1, 1e0]", [3, 40, 1])],
)
def test_labels_in_other_spellings(labels_text: bytes, expected: list[int]) -> None:
    line = b'{"predicted_label": 3, "labels": ' + labels_text + b', "distances": [0.5, 1.5e-3, NaN]}\n'
    labels, distances = read_verbose_jsonlines(line * 3)
    np.testing.assert_array_equal(labels, [expected] * 3)
    np.testing.assert_array_equal(distances, np.array([[0.5, 1.5e-3, np.nan]] * 3, np.float32))


def test_non_finite_values_are_written_as_json_spells_them() -> None:
    distances = np.array([[0.5, np.inf], [np.nan, -np.inf]], np.float32)
    buf = io.BytesIO()
    write_verbose_jsonlines(buf, np.array([[1, 2], [3, 4]]), distances, np.array([1.0, np.nan]))
    assert b"null" not in buf.getvalue()
    assert json.loads(buf.getvalue().splitlines()[1])["distances"][1] == -np.inf
    np.testing.assert_array_equal(read_verbose_jsonlines(buf.getvalue())[1], distances)
