"""recordio-protobuf: byte identity with the SageMaker SDK writers, round trips, errors."""

from __future__ import annotations

import io
import logging
import os
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from recpipe.formats import recordio
from recpipe.formats.exceptions import RecordIOError

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
logging.getLogger("sagemaker.config").setLevel(logging.WARNING)
sm = pytest.importorskip("sagemaker.amazon.common")


@pytest.fixture(params=["numpy", "numba"])
def writer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test with each writer: the numpy reference and the optional numba kernel."""
    if request.param == "numba":
        pytest.importorskip("numba")
    monkeypatch.setattr(recordio, "_USE_NUMBA", request.param == "numba")
    return str(request.param)


def _random_csr(
    rng: np.random.Generator, n: int, cols: int, max_nnz: int, dtype: type = np.float32
) -> sp.csr_matrix:
    nnz = rng.integers(0, max_nnz + 1, n)
    nnz[rng.random(n) < 0.1] = 0  # empty rows
    nnz = np.minimum(nnz, cols)
    indptr = np.concatenate([[0], np.cumsum(nnz)])
    indices = np.concatenate([np.sort(rng.choice(cols, k, replace=False)) for k in nnz] + [np.zeros(0, int)])
    data = rng.normal(size=indptr[-1]).astype(dtype)
    return sp.csr_matrix((data, indices.astype(np.int32), indptr), shape=(n, cols))


def _sdk_sparse(matrix: sp.spmatrix, labels: np.ndarray | None) -> bytes:
    buf = io.BytesIO()
    sm.write_spmatrix_to_sparse_tensor(buf, matrix, labels)
    return buf.getvalue()


def _ours_sparse(matrix: sp.spmatrix, labels: np.ndarray | None) -> bytes:
    buf = io.BytesIO()
    recordio.write_sparse(buf, matrix, labels)
    return buf.getvalue()


SHAPES = [(1, 1, 1), (50, 7, 7), (300, 200, 20), (200, 70_000, 30), (40, 3_000_000, 5), (64, 300, 300)]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("n", "cols", "max_nnz"), SHAPES)
@pytest.mark.parametrize("with_labels", [True, False])
def test_sparse_bytes_match_sdk(
    seed: int, n: int, cols: int, max_nnz: int, with_labels: bool, writer: str
) -> None:
    rng = np.random.default_rng(seed)
    matrix = _random_csr(rng, n, cols, max_nnz)
    labels = rng.normal(size=n).astype(np.float32) if with_labels else None
    ours = _ours_sparse(matrix, labels)
    assert ours == _sdk_sparse(matrix, labels)
    records = sm.read_records(io.BytesIO(ours))
    assert len(records) == n
    back, back_labels = recordio.read_sparse(ours)
    assert back.shape == matrix.shape and back.dtype == np.float32
    assert (back != matrix).nnz == 0
    if with_labels:
        assert labels is not None and back_labels is not None
        np.testing.assert_array_equal(back_labels, labels)
    else:
        assert back_labels is None


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(("n", "cols"), [(1, 1), (30, 5), (100, 64), (10, 600)])
@pytest.mark.parametrize("with_labels", [True, False])
def test_dense_bytes_match_sdk(seed: int, n: int, cols: int, with_labels: bool, writer: str) -> None:
    rng = np.random.default_rng(seed)
    array = rng.normal(size=(n, cols)).astype(np.float32)
    array[rng.random((n, cols)) < 0.3] = 0.0
    labels = rng.normal(size=n).astype(np.float32) if with_labels else None
    ours = io.BytesIO()
    recordio.write_dense(ours, array, labels)
    sdk = io.BytesIO()
    sm.write_numpy_to_dense_tensor(sdk, array, labels)
    assert ours.getvalue() == sdk.getvalue()
    back, back_labels = recordio.read_dense(ours.getvalue())
    np.testing.assert_array_equal(back, array)
    assert (back_labels is None) == (labels is None)
    if labels is not None:
        np.testing.assert_array_equal(back_labels, labels)


@pytest.mark.parametrize(
    ("value_dtype", "label_dtype"),
    [
        (np.float64, np.float64),
        (np.float32, np.float64),
        (np.float64, np.float32),
        (int, int),
        (np.float32, int),
    ],
)
def test_other_sdk_dtypes_match(value_dtype: type, label_dtype: type, writer: str) -> None:
    rng = np.random.default_rng(7)
    if value_dtype is int:
        matrix = sp.csr_matrix(rng.integers(-(2**31), 2**31 - 1, (40, 9)) * (rng.random((40, 9)) < 0.5))
    else:
        matrix = _random_csr(rng, 40, 1000, 12, value_dtype)
    labels = rng.integers(-5, 2**20, 40) if label_dtype is int else rng.normal(size=40).astype(label_dtype)
    ours = _ours_sparse(matrix, labels)
    assert ours == _sdk_sparse(matrix, labels)
    back, back_labels = recordio.read_sparse(ours)  # through the general per-record parser
    assert (back != matrix).nnz == 0
    np.testing.assert_array_equal(back_labels, labels)


def test_big_chunks_and_uneven_rows_match_sdk(monkeypatch: pytest.MonkeyPatch, writer: str) -> None:
    rng = np.random.default_rng(3)
    matrix = _random_csr(rng, 400, 5000, 3)
    matrix = sp.vstack([matrix, _random_csr(rng, 2, 5000, 2000), _random_csr(rng, 100, 5000, 3)]).tocsr()
    monkeypatch.setattr(recordio, "_CHUNK_ROWS", 64)  # several chunks, one of them very uneven
    monkeypatch.setattr(recordio, "_READ_CHUNK", 50)
    ours = _ours_sparse(matrix, None)
    assert ours == _sdk_sparse(matrix, None)
    back, _ = recordio.read_sparse(io.BytesIO(ours))
    assert (back != matrix).nnz == 0


def test_csr_array_and_concatenated_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    a, b = _random_csr(rng, 30, 50, 5), _random_csr(rng, 20, 50, 5)
    ya, yb = rng.random(30).astype(np.float32), rng.random(20).astype(np.float32)
    with (tmp_path / "a.pbr").open("wb") as f:
        recordio.write_sparse(f, sp.csr_array(a), ya)
    with (tmp_path / "b.pbr").open("wb") as f:
        recordio.write_sparse(f, b, yb)
    both = (tmp_path / "a.pbr").read_bytes() + (tmp_path / "b.pbr").read_bytes()
    m, y = recordio.read_sparse(both)
    assert (m != sp.vstack([a, b])).nnz == 0
    m2, y2 = recordio.read_sparse_files([tmp_path / "a.pbr", tmp_path / "b.pbr"])
    assert (m2 != m).nnz == 0
    np.testing.assert_array_equal(y, np.concatenate([ya, yb]))
    np.testing.assert_array_equal(y2, y)


def test_shards_hold_whole_records_and_concatenate_to_the_whole(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    matrix = _random_csr(rng, 500, 1000, 10)
    labels = rng.random(500).astype(np.float32)
    whole = _ours_sparse(matrix, labels)
    paths = recordio.write_sparse_shards(tmp_path / "out", matrix, labels, max_bytes=4096)
    assert [p.name for p in paths[:2]] == ["part-00000.pbr", "part-00001.pbr"]
    sizes = [p.stat().st_size for p in paths]
    assert (max(sizes) <= 4096 and len(paths) == -(-len(whole) // 4096)) or len(paths) > len(whole) // 4096
    assert b"".join(p.read_bytes() for p in paths) == whole
    for p in paths:  # each shard is readable on its own
        recordio.read_sparse(p)
    m, y = recordio.read_sparse_files(paths)
    assert (m != matrix).nnz == 0
    np.testing.assert_array_equal(y, labels)
    np.testing.assert_array_equal(recordio.record_sizes_sparse(matrix, labels).sum(), len(whole))


def test_dense_shards(tmp_path: Path) -> None:
    array = np.arange(600, dtype=np.float32).reshape(100, 6)
    paths = recordio.write_dense_shards(tmp_path, array, max_bytes=500, prefix="users")
    assert paths[0].name == "users-00000.pbr"
    x, y = recordio.read_dense_files(paths)
    np.testing.assert_array_equal(x, array)
    assert y is None


def test_shard_smaller_than_a_record_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RecordIOError, match=r"Row 0 takes .* bytes, more than max_bytes=16"):
        recordio.write_dense_shards(tmp_path, np.ones((2, 8), np.float32), max_bytes=16)


def test_empty_inputs() -> None:
    m, y = recordio.read_sparse(b"")
    assert m.shape == (0, 0) and y is None
    assert _ours_sparse(sp.csr_matrix((0, 5), dtype=np.float32), None) == b""


def _frame(payload: bytes) -> bytes:
    pad = (-len(payload)) % 4
    return struct.pack("<II", recordio.MAGIC, len(payload)) + payload + b"\0" * pad


def _good() -> bytes:
    return _ours_sparse(sp.csr_matrix(np.array([[0, 1.5, 0], [2.0, 0, 3.0]], np.float32)), None)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x01\x02\x03\x04\x05\x06\x07\x08", r"wrong magic 0x04030201 at byte 0"),
        (_good() + b"\x0a\x23\xd7\xce", r"truncated record header at byte \d+"),
        (_good()[:-6], r"truncated record at byte \d+: it declares"),
        (_good() + b"\0" * 8, r"wrong magic 0x00000000 at byte \d+"),
        (_frame(b"\x0a\x02\x08\x01"), r"unknown field 1 \(wire type 0\) in the feature map entry at byte 10"),
        (_frame(b"\x30\x01"), r"unknown field 6 \(wire type 0\) in Record at byte 8"),
        (_frame(b"\x0a\x10"), r"truncated field 1 in Record .* at byte 8"),
        (_frame(b"\x0a\x0d\x0a\x05other\x12\x04\x12\x02\x0a\x00"), r"unsupported feature name 'other'"),
        (_frame(b"\x12\x00"), r"unsupported label name None \(expected .values.\) at byte 10"),
        (_frame(b""), r"Record has no features at byte 8"),
    ],
)
def test_bad_bytes_raise_with_offset(data: bytes, message: str) -> None:
    with pytest.raises(RecordIOError, match=message):
        recordio.read_sparse(data)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: recordio.write_sparse(io.BytesIO(), np.ones((2, 2))), "expects a scipy.sparse matrix"),
        (lambda: recordio.write_dense(io.BytesIO(), np.ones(3, np.float32)), "must be 2-dimensional"),
        (lambda: recordio.write_dense(io.BytesIO(), np.ones((2, 2), np.int8)), "dtype must be float32"),
        (
            lambda: recordio.write_dense(io.BytesIO(), np.ones((2, 2), np.float32), np.ones(3, np.float32)),
            r"vector of 2 values",
        ),
        (
            lambda: recordio.write_sparse_shards(
                "/tmp", sp.csr_matrix(np.ones((1, 1), np.float32)), max_bytes=0
            ),
            "'max_bytes' parameter must be a positive int",
        ),
    ],
)
def test_writer_argument_errors(call: object, message: str) -> None:
    with pytest.raises(RecordIOError, match=message):
        call()  # type: ignore[operator]


def test_dmlc_multipart_record_is_reassembled() -> None:
    payload = _good()[8:]  # first record's payload (magic-free), split in two around a magic word
    first_len = struct.unpack_from("<I", _good(), 4)[0]
    payload = payload[:first_len]
    head, tail = payload[:4], payload[4:]
    # dmlc writes the magic-containing record as parts; the reader puts the magic back between them
    whole = head + struct.pack("<I", recordio.MAGIC) + tail
    assert whole  # the reassembled payload is not a valid record here: check the framing only
    framed = struct.pack("<II", recordio.MAGIC, (1 << 29) | len(head)) + head
    framed += struct.pack("<II", recordio.MAGIC, (3 << 29) | len(tail)) + tail + b"\0" * ((-len(tail)) % 4)
    starts, _, joined = recordio._frames(np.frombuffer(framed, np.uint8), "input")
    assert list(starts) == [8] and joined == {0: whole}


def test_recordio_module_is_self_contained() -> None:
    source = Path(recordio.__file__).read_text()
    imports = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    allowed = (
        "numpy",
        "scipy",
        "__future__",
        "os",
        "struct",
        "sys",
        "itertools",
        "collections",
        "dataclasses",
        "pathlib",
        "typing",
    )
    assert all(line.split()[1].split(".")[0] in allowed for line in imports), imports
    assert "recpipe" not in "".join(imports)
    # numba is optional: imported lazily, inside a try, by the one function that compiles the kernel
    assert source.count("import numba") == 1 and "            import numba\n" in source


@pytest.mark.parametrize("how", ["not installed", "RECPIPE_NUMBA=0"])
def test_writer_without_numba_uses_numpy(how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if how == "not installed":
        monkeypatch.setitem(sys.modules, "numba", None)  # as in the processing container
    else:
        monkeypatch.setenv("RECPIPE_NUMBA", "0")
    monkeypatch.setattr(recordio, "_numba_kernel", None)
    monkeypatch.setattr(recordio, "_USE_NUMBA", True)
    rng = np.random.default_rng(8)
    matrix = _random_csr(rng, 80, 500, 9)
    labels = rng.normal(size=80).astype(np.float32)
    assert _ours_sparse(matrix, labels) == _sdk_sparse(matrix, labels)
    assert recordio._numba_kernel is False


@pytest.mark.parametrize("value_dtype", [np.float32, np.float64, int])
def test_kernel_as_plain_python_matches_numpy_path(value_dtype: type) -> None:
    """The numba kernel's source is ordinary Python: run it uncompiled against the numpy path."""
    rng = np.random.default_rng(9)
    if value_dtype is int:
        matrix = sp.csr_matrix(rng.integers(-(2**31), 2**31 - 1, (12, 300)) * (rng.random((12, 300)) < 0.05))
        labels = rng.integers(-3, 300, 12)
    else:
        matrix = _random_csr(rng, 12, 3_000_000, 40, value_dtype)
        labels = rng.normal(size=12).astype(value_dtype)
    rows = recordio._sparse_rows(matrix, labels)
    expected = b"".join(piece.tobytes() for piece in recordio._encode(rows))
    got = recordio._encode_compiled(recordio._encode_kernel_py, rows).tobytes()
    assert got == expected == _sdk_sparse(matrix, labels)
    dense = rng.normal(size=(5, 7)).astype(np.float32)
    rows = recordio._dense_rows(dense, None)
    expected = b"".join(piece.tobytes() for piece in recordio._encode(rows))
    assert recordio._encode_compiled(recordio._encode_kernel_py, rows).tobytes() == expected


def test_auto_mode_keeps_small_and_dense_writes_on_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_kernel() -> None:
        raise AssertionError("the numba kernel was asked for")

    monkeypatch.setattr(recordio, "_USE_NUMBA", None)
    monkeypatch.setattr(recordio, "_numba_encoder", no_kernel)
    monkeypatch.setattr(recordio, "_items_written", 0)
    monkeypatch.setattr(recordio, "_CUMULATIVE", False)
    monkeypatch.setattr(recordio, "_NUMBA_MIN_ITEMS", 100)
    monkeypatch.setattr(recordio, "_NUMBA_MIN_ITEMS_LOADED", 100)
    rng = np.random.default_rng(10)
    recordio.write_dense(io.BytesIO(), rng.normal(size=(50, 8)).astype(np.float32))  # dense floats
    recordio.write_sparse(io.BytesIO(), _random_csr(rng, 5, 10, 3))  # below the threshold
    with pytest.raises(AssertionError, match="numba kernel"):
        recordio.write_sparse(io.BytesIO(), _random_csr(rng, 50, 10, 5))


def test_auto_mode_loads_the_kernel_once_a_process_has_written_enough(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Many small writes (the processing step's chunks) add up to the bulk threshold."""
    asked: list[int] = []

    def no_kernel() -> None:
        asked.append(1)

    monkeypatch.setattr(recordio, "_USE_NUMBA", None)
    monkeypatch.setattr(recordio, "_numba_encoder", no_kernel)
    monkeypatch.setattr(recordio, "_numba_kernel", None)
    monkeypatch.setitem(sys.modules, "numba", None)  # (not "loaded": the per-write rule stays high)
    monkeypatch.setattr(recordio, "_items_written", 0)
    monkeypatch.setattr(recordio, "_NUMBA_MIN_ITEMS", 100)
    rng = np.random.default_rng(11)
    matrix = _random_csr(rng, 8, 10, 3)  # ~20 items a write
    for cumulative, expected in ((False, 0), (True, 1)):
        monkeypatch.setattr(recordio, "_CUMULATIVE", cumulative)
        monkeypatch.setattr(recordio, "_items_written", 0)
        asked.clear()
        for _ in range(3):
            recordio.write_sparse(io.BytesIO(), matrix)
        assert asked == []
        for _ in range(10):
            recordio.write_sparse(io.BytesIO(), matrix)
        assert (len(asked) > 0) == bool(expected)


# ---- reader: the numpy parser and the optional numba kernel give the same results


@pytest.fixture(params=["numpy", "numba"])
def reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test with each reader: the numpy parser and the optional numba kernel."""
    if request.param == "numba":
        pytest.importorskip("numba")
    monkeypatch.setattr(recordio, "_USE_NUMBA_READER", request.param == "numba")
    return str(request.param)


def _same(a: tuple[sp.csr_matrix, np.ndarray | None], b: tuple[sp.csr_matrix, np.ndarray | None]) -> None:
    (ma, ya), (mb, yb) = a, b
    assert ma.shape == mb.shape and ma.dtype == mb.dtype and ma.indices.dtype == mb.indices.dtype
    np.testing.assert_array_equal(ma.indptr, mb.indptr)
    np.testing.assert_array_equal(ma.indices, mb.indices)
    np.testing.assert_array_equal(ma.data.view(np.uint32), mb.data.view(np.uint32))  # bit for bit
    assert (ya is None) == (yb is None)
    if ya is not None and yb is not None:
        assert ya.dtype == yb.dtype
        np.testing.assert_array_equal(ya.view(np.uint32), yb.view(np.uint32))


def _read_numpy(data: bytes, monkeypatch: pytest.MonkeyPatch) -> tuple[sp.csr_matrix, np.ndarray | None]:
    with monkeypatch.context() as m:
        m.setattr(recordio, "_USE_NUMBA_READER", False)
        return recordio.read_sparse(data)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(("n", "cols", "max_nnz"), SHAPES)
@pytest.mark.parametrize("with_labels", [True, False])
def test_reader_paths_agree(seed: int, n: int, cols: int, max_nnz: int, with_labels: bool, reader: str,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(seed)
    matrix = _random_csr(rng, n, cols, max_nnz)
    labels = rng.normal(size=n).astype(np.float32) if with_labels else None
    data = _sdk_sparse(matrix, labels)
    got = recordio.read_sparse(data)
    _same(got, _read_numpy(data, monkeypatch))
    assert (got[0] != matrix).nnz == 0


def test_reader_kernel_as_plain_python_matches_numpy_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    """The numba kernel's source is ordinary Python: run it uncompiled against the numpy parser."""
    rng = np.random.default_rng(12)
    matrix = _random_csr(rng, 30, 3_000_000, 12)  # keys of up to 4 varint bytes, empty rows
    for labels in (rng.normal(size=30).astype(np.float32), None):
        data = _sdk_sparse(matrix, labels)
        buf = np.frombuffer(data, np.uint8)
        starts, lens, _ = recordio._frames(buf, "input")
        parsed = recordio._parse_compiled(recordio._parse_kernel_py, buf, starts, lens)
        assert parsed is not None
        expected = recordio._parse_fast(buf, starts, lens)
        assert expected is not None and expected.keys is not None and parsed.keys is not None
        np.testing.assert_array_equal(parsed.counts, expected.counts)
        np.testing.assert_array_equal(parsed.values.view(np.uint32), expected.values.view(np.uint32))
        np.testing.assert_array_equal(parsed.keys, expected.keys)
        assert parsed.keys.dtype == expected.keys.dtype and parsed.n_cols == expected.n_cols == 3_000_000
        if labels is None:
            assert parsed.labels is None and expected.labels is None
        else:
            assert parsed.labels is not None
            np.testing.assert_array_equal(parsed.labels, labels)


def test_reader_kernel_declines_what_it_does_not_parse() -> None:
    """Dense records, mixed labels, shapes that differ, broken bytes: ok=False (numpy decides)."""
    dense = io.BytesIO()
    recordio.write_dense(dense, np.ones((3, 4), np.float32))
    a = _sdk_sparse(sp.csr_matrix(np.array([[0, 1.5, 0]], np.float32)), np.ones(1, np.float32))
    b = _sdk_sparse(sp.csr_matrix(np.array([[2.0, 0, 0]], np.float32)), None)
    c = _sdk_sparse(sp.csr_matrix(np.array([[2.0, 0, 0, 0]], np.float32)), np.ones(1, np.float32))
    for data in (dense.getvalue(), a + b, a + c, a.replace(b"values", b"valuez", 1)):
        buf = np.frombuffer(data, np.uint8)
        starts, lens = recordio._frames(buf, "input")[:2]
        assert recordio._parse_compiled(recordio._parse_kernel_py, buf, starts, lens) is None


def test_reader_falls_back_to_numpy_with_the_same_results_and_errors(
    reader: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    dense = io.BytesIO()
    recordio.write_dense(dense, np.arange(12, dtype=np.float32).reshape(3, 4), np.ones(3, np.float32))
    _same(recordio.read_sparse(dense.getvalue()), _read_numpy(dense.getvalue(), monkeypatch))
    a = _sdk_sparse(sp.csr_matrix(np.array([[0, 1.5, 0]], np.float32)), np.ones(1, np.float32))
    b = _sdk_sparse(sp.csr_matrix(np.array([[2.0, 0, 0]], np.float32)), None)
    with pytest.raises(RecordIOError):
        _read_numpy(a + b, monkeypatch)
    with pytest.raises(RecordIOError):
        recordio.read_sparse(a + b)
    with pytest.raises(RecordIOError, match=r"wrong magic 0x00000000 at byte \d+"):
        recordio.read_sparse(_good() + b"\0" * 8)


def test_reader_auto_mode_by_size(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[int] = []

    def fake_kernel(*args: object) -> tuple[object, ...]:
        asked.append(1)
        return recordio._parse_kernel_py(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(recordio, "_USE_NUMBA_READER", None)
    monkeypatch.setattr(recordio, "_numba_parser", fake_kernel)
    monkeypatch.setattr(recordio, "_NUMBA_READ_MIN_BYTES_LOADED", 1000)
    small = _good()
    big = _ours_sparse(_random_csr(np.random.default_rng(13), 200, 50, 10), None)
    assert len(small) < 1000 < len(big)
    recordio.read_sparse(small)
    assert asked == []
    _same(recordio.read_sparse(big), _read_numpy(big, monkeypatch))
    assert asked == [1]
    monkeypatch.setattr(recordio, "_numba_parser", False)  # numba not installed: numpy
    recordio.read_sparse(big)
    assert asked == [1]
