"""MXNet NDArray list files and the FM model.tar.gz, on the golden fixtures."""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from recpipe.formats import fm_model_member_bytes, load_fm_model, load_params, save_fm_model, save_params
from recpipe.formats.exceptions import ModelArtifactError, MXNetFormatError


def _member(tar_path: Path, name: str = "model_algo-1") -> bytes:
    with tarfile.open(tar_path) as tar:
        f = tar.extractfile(name)
        assert f is not None
        return f.read()


def _zip_entry(member: bytes, name: str) -> bytes:
    with zipfile.ZipFile(io.BytesIO(member)) as z:
        return z.read(name)


def _tar(members: dict[str, bytes]) -> io.BytesIO:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw.seek(0)
    return raw


def test_fm_params_match_expected_and_rewrite_byte_for_byte(fm_fixture: Path) -> None:
    params = _zip_entry(_member(fm_fixture / "model.tar.gz"), "params")
    arrays = load_params(params)
    expected = np.load(fm_fixture / "expected.npz")
    assert list(arrays) == ["arg:v", "arg:w1_weight", "arg:w0_weight"]
    for key, exp in (("arg:v", "V"), ("arg:w1_weight", "w"), ("arg:w0_weight", "b")):
        assert arrays[key].dtype == expected[exp].dtype and arrays[key].shape == expected[exp].shape
        np.testing.assert_array_equal(arrays[key], expected[exp])
    assert save_params(arrays) == params


@pytest.mark.parametrize("host", ["model_algo-1", "model_algo-2"])
def test_real_ntm_params_parse_to_the_last_byte_and_rewrite(ntm_fixture: Path, host: str) -> None:
    params = _zip_entry(_member(ntm_fixture, host), "params")
    arrays = load_params(io.BytesIO(params))
    assert arrays["arg:projection_weight"].shape == (2000, 10)
    assert arrays["arg:enc_0_weight"].shape == (30, 2000)
    assert all(a.dtype == np.float32 for a in arrays.values())
    assert save_params(arrays) == params


def test_save_params_round_trips_dtypes_and_np_shape() -> None:
    arrays = {
        "a": np.arange(6, dtype=np.int64).reshape(2, 3),
        "b": np.array([1.5, -2], np.float64),
        "c": np.array([True, False]),
        "d": np.zeros((0, 4), np.float16),
    }
    back = load_params(save_params(arrays))
    assert list(back) == list(arrays)
    for key, value in arrays.items():
        assert back[key].dtype == value.dtype
        np.testing.assert_array_equal(back[key], value)
    scalar = load_params(save_params({"s": np.array(3.0, np.float32)}, np_shape=True))
    assert scalar["s"].shape == ()


def _one_array(
    *, magic: int = 0xF993FAC9, stype: int = 0, flag: int = 0, dims: tuple[int, ...] = (2,)
) -> bytes:
    body = struct.pack(f"<Iii{len(dims)}q", magic, stype, len(dims), *dims) + struct.pack("<iii", 1, 0, flag)
    data = np.zeros(int(np.prod(dims)), np.float32).tobytes()
    return struct.pack("<QQQ", 0x112, 0, 1) + body + data + struct.pack("<QQ", 1, 1) + b"x"


def _row_sparse(
    *, indices: tuple[int, ...] = (1, 3), index_flag: int = 6, stored: tuple[int, ...] | None = None
) -> bytes:
    """One row_sparse (4, 3) float32 array laid out as MXNet's NDArray::Save writes it."""
    stored = stored or (len(indices), 3)
    body = struct.pack("<Iii2q", 0xF993FAC9, 1, 2, *stored) + struct.pack("<i2q", 2, 4, 3)
    body += struct.pack("<iiiii1q", 1, 0, 0, index_flag, 1, len(indices))
    body += np.ones(stored, np.float32).tobytes() + np.array(indices, np.int64).tobytes()
    return struct.pack("<QQQ", 0x112, 0, 1) + body + struct.pack("<QQ", 1, 1) + b"x"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x13\x01" + b"\0" * 22, r"wrong magic 0x113 \(expected 0x112, an NDArray list\) at byte 0"),
        (_one_array(magic=0xDEADBEEF), r"array 0 has unknown NDArray magic 0xDEADBEEF .* at byte 24"),
        (_one_array(magic=0xF993FAC8), r"legacy \(pre-V2\) NDArray magic 0xF993FAC8"),
        (_one_array(stype=2), r"storage type 2 \(csr\); only dense and row_sparse are supported at byte 28"),
        (_row_sparse(indices=(0, 0)), r"array 0 has row indices not increasing within \[0, 4\) at byte \d+"),
        (_row_sparse(indices=(1, 4)), r"row indices not increasing within \[0, 4\)"),
        (_row_sparse(index_flag=0), r"row_sparse array 0 of shape \(4, 3\) stores .* float32 row indices"),
        (_row_sparse(stored=(2, 2)), r"stores rows of shape \(2, 2\)"),
        (_row_sparse()[:-21], r"truncated row indices of array 0"),
        (_one_array(flag=12), r"unsupported type flag 12 at byte 52"),
        (_one_array()[:-20], r"truncated data of array 0"),
        (_one_array()[:10], r"truncated reserved header word"),
        (_one_array() + b"\0", r"1 unexpected trailing bytes"),
    ],
)
def test_bad_params_raise_naming_what_and_where(data: bytes, message: str) -> None:
    with pytest.raises(MXNetFormatError, match=message):
        load_params(data)


def test_load_fm_model_matches_expected(fm_fixture: Path) -> None:
    v, w, b = load_fm_model(fm_fixture / "model.tar.gz")
    expected = np.load(fm_fixture / "expected.npz")
    np.testing.assert_array_equal(v, expected["V"])
    np.testing.assert_array_equal(w, expected["w"].reshape(-1))
    assert w.shape == (18,) and v.dtype == np.float32 and b == float(expected["b"][0])


def test_save_fm_model_round_trips_and_is_deterministic(fm_fixture: Path, tmp_path: Path) -> None:
    v, w, b = load_fm_model(fm_fixture / "model.tar.gz")
    save_fm_model(tmp_path / "model.tar.gz", v, w, b)
    again = io.BytesIO()
    save_fm_model(again, v, w.reshape(-1, 1), b)
    assert (tmp_path / "model.tar.gz").read_bytes() == again.getvalue()
    v2, w2, b2 = load_fm_model(tmp_path / "model.tar.gz")
    np.testing.assert_array_equal(v2, v)
    np.testing.assert_array_equal(w2, w)
    assert b2 == b
    member = _member(tmp_path / "model.tar.gz")
    assert member == fm_model_member_bytes(v, w, b)
    fixture_params = _zip_entry(_member(fm_fixture / "model.tar.gz"), "params")
    assert _zip_entry(member, "params") == fixture_params  # the same nd.save bytes as MXNet
    assert sorted(zipfile.ZipFile(io.BytesIO(member)).namelist()) == ["meta.json", "params", "symbol.json"]


def test_fm_variants_raw_params_multi_host_and_linear_plus_bias() -> None:
    rng = np.random.default_rng(0)
    v = rng.normal(size=(6, 3)).astype(np.float32)
    w = rng.normal(size=6).astype(np.float32)
    raw = save_params(
        {"arg:v": v, "arg:w1_weight": w.reshape(6, 1), "arg:w0_weight": np.array([0.5], np.float32)}
    )
    got = load_fm_model(_tar({"model_algo-1": raw}))
    np.testing.assert_array_equal(got[0], v)
    other = fm_model_member_bytes(v * 0, w * 0, 9.0)
    got = load_fm_model(_tar({"model_algo-2": other, "model_algo-1": fm_model_member_bytes(v, w, 0.5)}))
    np.testing.assert_array_equal(got[1], w)
    assert got[2] == 0.5
    old = save_params(
        {
            "arg:v": v.T.copy(),
            "arg:Linear_Plus_Bias_weight": w.reshape(1, 6),
            "arg:Linear_Plus_Bias_bias": np.array([0.25], np.float32),
        }
    )
    got = load_fm_model(_tar({"model_algo-1": old}))
    np.testing.assert_array_equal(got[0], v)
    np.testing.assert_array_equal(got[1], w)
    assert got[2] == 0.25


def _params(**arrays: np.ndarray) -> bytes:
    return save_params({f"arg:{k}": a for k, a in arrays.items()})


_V = np.zeros((4, 2), np.float32)
_W = np.zeros((4, 1), np.float32)
_B = np.zeros(1, np.float32)


@pytest.mark.parametrize(
    ("members", "error", "message"),
    [
        (
            {"model_algo-2": b"x"},
            ModelArtifactError,
            r"has no 'model_algo-1' member \(found \['model_algo-2'\]\)",
        ),
        ({"model.bin": b"x"}, ModelArtifactError, r"has no 'model_algo-1' member"),
        ({"model_algo-1": b"garbage!"}, ModelArtifactError, r"neither a zip .* nor an MXNet params file"),
        ({"model_algo-1": _params(w1_weight=_W, w0_weight=_B)}, ModelArtifactError, r"has no 'arg:v' array"),
        ({"model_algo-1": _params(v=_V, w0_weight=_B)}, ModelArtifactError, r"has no 'arg:w1_weight' array"),
        ({"model_algo-1": _params(v=_V, w1_weight=_W)}, ModelArtifactError, r"has no 'arg:w0_weight' array"),
        (
            {"model_algo-1": _params(v=np.zeros((5, 2), np.float32), w1_weight=_W, w0_weight=_B)},
            ModelArtifactError,
            r"'arg:v' has shape \(5, 2\) but 'arg:w1_weight' has 4 features",
        ),
        (
            {"model_algo-1": _params(v=_V, w1_weight=_W, w0_weight=np.zeros(2, np.float32))},
            ModelArtifactError,
            r"'arg:w0_weight' must hold one value",
        ),
        ({"model_algo-1": _params(v=_V, w1_weight=_W, w0_weight=_B)[:-9]}, MXNetFormatError, r"truncated"),
    ],
)
def test_bad_fm_artifacts(members: dict[str, bytes], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        load_fm_model(_tar(members))


def test_truncated_or_non_tar_artifact(fm_fixture: Path, tmp_path: Path) -> None:
    data = (fm_fixture / "model.tar.gz").read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelArtifactError, match=r"truncated or corrupt|not a readable tar"):
        load_fm_model(tmp_path / "cut.tar.gz")
    (tmp_path / "plain.gz").write_bytes(gzip.compress(b"not a tar"))
    with pytest.raises(ModelArtifactError, match="not a readable tar"):
        load_fm_model(tmp_path / "plain.gz")


@pytest.mark.parametrize(
    ("v", "w", "b", "message"),
    [
        (np.zeros(3), np.zeros(3), 0.0, r"V must be \(n_features, n_factors\)"),
        (np.zeros((3, 2)), np.zeros(4), 0.0, r"w must have shape \(3,\) or \(3, 1\)"),
        (np.zeros((3, 2)), np.zeros(3), [1.0, 2.0], r"b must be a single number"),
    ],
)
def test_save_fm_model_shape_errors(v: np.ndarray, w: np.ndarray, b: object, message: str) -> None:
    with pytest.raises(ModelArtifactError, match=message):
        fm_model_member_bytes(v, w, b)


def test_row_sparse_fm_params_read_dense_and_rewrite_byte_for_byte(fm_rowsparse_fixture: Path) -> None:
    """Real MXNet 1.9.1 output with row_sparse ``v`` and ``w1_weight`` (rows 2, 9, 16 not stored)."""
    params = _zip_entry(_member(fm_rowsparse_fixture / "model.tar.gz"), "params")
    arrays = load_params(params)
    expected = np.load(fm_rowsparse_fixture / "expected.npz")
    assert list(arrays) == ["arg:v", "arg:w1_weight", "arg:w0_weight"]
    for key, exp in (("arg:v", "V"), ("arg:w1_weight", "w"), ("arg:w0_weight", "b")):
        assert arrays[key].dtype == expected[exp].dtype and arrays[key].shape == expected[exp].shape
        np.testing.assert_array_equal(arrays[key], expected[exp])
    assert not arrays["arg:v"][[2, 9, 16]].any() and arrays["arg:v"].any(axis=1).sum() == 15
    assert save_params(arrays, row_sparse={"arg:v", "arg:w1_weight"}) == params  # MXNet's own bytes
    assert save_params(arrays) != params and load_params(save_params(arrays)).keys() == arrays.keys()


def test_load_fm_model_reads_row_sparse_artifacts(fm_rowsparse_fixture: Path) -> None:
    v, w, b = load_fm_model(fm_rowsparse_fixture / "model.tar.gz")
    expected = np.load(fm_rowsparse_fixture / "expected.npz")
    np.testing.assert_array_equal(v, expected["V"])
    np.testing.assert_array_equal(w, expected["w"].reshape(-1))
    assert v.dtype == np.float32 and b == float(expected["b"][0])


def test_row_sparse_round_trip_keeps_zero_rows_and_dtypes() -> None:
    rng = np.random.default_rng(15)
    arrays = {"a": rng.normal(size=(6, 2, 3)).astype(np.float32), "b": np.zeros((3, 2), np.float64)}
    arrays["a"][[0, 4]] = 0.0
    data = save_params(arrays, row_sparse={"a", "b"})
    back = load_params(data)
    for key, value in arrays.items():
        assert back[key].dtype == value.dtype
        np.testing.assert_array_equal(back[key], value)
