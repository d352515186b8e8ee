"""k-NN verbose jsonlines: writer/reader round trips, ragged rows, errors with line numbers."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from recpipe.formats import knn_output, read_verbose_jsonlines, write_verbose_jsonlines
from recpipe.formats.exceptions import KnnOutputError


@pytest.mark.parametrize(("n", "k"), [(1, 1), (10, 5), (300, 40)])
def test_round_trip_and_json_shape(n: int, k: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(knn_output, "_BLOCK_LINES", 128)
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
