"""k-NN batch transform output: ``application/jsonlines; verbose=true``.

One JSON object per input record, in input order::

    {"predicted_label": 42.0, "labels": [42.0, 7.0, ...], "distances": [0.1, 0.25, ...]}

``labels`` are the training labels of the neighbours (here: item indices, written as floats like
the service does) and ``distances`` are sorted from smallest to largest, as the service returns
them (for ``INNER_PRODUCT`` the "distance" is the raw inner product, so the best match comes last;
:mod:`recpipe.topn` sorts by score itself and never relies on this order).

Both directions work on blocks of lines with array operations (numpy only: the reader runs in
the publish Lambda):

- ``write_verbose_jsonlines`` formats every number of a block at once into fixed-width byte slots
  (integral labels as ``123.0``; distances with 9 significant digits, trailing zeros dropped,
  ``0.125`` / ``0.00031`` / ``1.25e-7``: enough for every float32 to read back exactly; ``NaN`` and
  ``Infinity`` spelt as ``json.dumps`` does) and drops the unused slot bytes with one boolean
  compaction.
- ``read_verbose_jsonlines`` checks a block's structure with array operations: every line must be
  the object above (keys in any order, the same on every line of the block; any JSON whitespace).
  Then it reads all the block's numbers at once: digits are combined 8 at a time with integer
  arithmetic on unaligned 8-byte loads and scaled by exact powers of ten (strtod's fast path);
  labels spelt ``123.0`` are read as integers directly. Numbers of other forms (``NaN``, more than
  19 significant digits) go through one ``np.fromstring`` call for the block. A block that is not
  in the layout (extra keys, mixed key orders, malformed lines) is parsed line by line with
  ``json.loads``, which is also where malformed lines are reported with their 1-based line number.
  The fast path is a little more lenient than JSON about number spelling (``01`` and ``1.`` are
  read the obvious way); anything else json.loads rejects, it rejects too.

``read_verbose_jsonlines`` returns dense ``(n, k)`` arrays; rows with fewer than ``k`` neighbours
(k = the longest row) are padded with label ``-1`` and distance ``nan``.
"""

from __future__ import annotations

import json
import warnings
from typing import IO, Any

import numpy as np

from recpipe.formats._source import Source, read_source
from recpipe.formats.exceptions import KnnOutputError

__all__ = ["read_verbose_jsonlines", "write_verbose_jsonlines"]


_BLOCK_LINES = 4096  # lines per block (reader and writer)
_BLOCK_BYTES = 1 << 19  # and at most about this many bytes per block (reader): arrays stay in cache

# --------------------------------------------------------------------------------------------------
# writer

_PREFIX = b'{"predicted_label": '
_MID_LABELS = b', "labels": ['
_MID_DISTANCES = b'], "distances": ['
_SUFFIX = b"]}\n"
_SEP = b", "

# "0000" ... "9999" as little-endian uint32 words: four digits written with one store.
_DIGITS4 = np.array([f"{i:04d}".encode() for i in range(10_000)]).view("<u4")
_POW10_INT = 10 ** np.arange(20, dtype=np.uint64)
_POW10 = 10.0 ** np.arange(-80, 81)  # _POW10[80 + e] = 10**e
_SPECIAL = {"nan": b"NaN", "inf": b"Infinity", "-inf": b"-Infinity"}  # json.dumps spelling


def _digit_words(values: np.ndarray, words: int) -> np.ndarray:
    """Non-negative ints (uint64) as ``4 * words`` zero-padded ASCII digits: (n, 4 * words) uint8."""
    out = np.empty((values.size, words), "<u4")
    # 32-bit division is several times faster than 64-bit: use it for the digits that fit
    rest: Any = (
        values.astype(np.uint32) if words <= 2 or not np.any(values >> np.uint64(32)) else values.copy()
    )
    base = rest.dtype.type(10_000)
    for j in range(words - 1, -1, -1):
        out[:, j] = _DIGITS4[rest % base]
        rest //= base
    return out.view(np.uint8)


def _int_tokens(values: np.ndarray, suffix: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Integers (int64) as ``-123`` + suffix: (n, w) ASCII slots and the mask of the bytes used."""
    neg = values < 0
    mag = np.abs(values).astype(np.uint64)  # abs(int64 min) wraps to 2**63: still right as uint64
    top = int(mag.max()) if mag.size else 0
    n_digits = np.ones(mag.size, np.int64)
    for p in _POW10_INT[1:19]:
        if top < p:
            break
        n_digits += mag >= p
    words = -(-len(str(top)) // 4)
    width = 1 + 4 * words + len(suffix)
    chars = np.empty((mag.size, width), np.uint8)
    used = np.empty((mag.size, width), bool)
    chars[:, 0] = ord("-")
    used[:, 0] = neg
    chars[:, 1 : 1 + 4 * words] = _digit_words(mag, words)
    used[:, 1 : 1 + 4 * words] = np.arange(4 * words, 0, -1) <= n_digits[:, None]
    chars[:, 1 + 4 * words :] = np.frombuffer(suffix, np.uint8)
    used[:, 1 + 4 * words :] = True
    return chars, used


def _positional_tables() -> tuple[np.ndarray, np.ndarray]:
    """For decimal exponents -5..8: where each of the 15 characters after the sign comes from
    (0-8: the 9 significant digits, 9: ".", 10: "0"), and the length for 1..9 significant digits.
    ``ddd.ddd`` (at least one digit after the point) for e >= 0, ``0.000ddd`` for e < 0."""
    source = np.full((14, 15), 10, np.uint8)
    length = np.zeros((14, 10), np.uint8)
    for e in range(-5, 9):
        point = e + 1 if e >= 0 else 1
        first_digit = 0 if e >= 0 else 1 - e  # column of the first significant digit
        for p in range(15):
            if p == point:
                source[e + 5, p] = 9
            elif p >= first_digit:
                digit = p - first_digit - (e >= 0 and p > point)
                source[e + 5, p] = digit if digit < 9 else 10
        for sig in range(1, 10):
            length[e + 5, sig] = e + 2 + max(sig - e - 1, 1) if e >= 0 else first_digit + sig
    return source, length


_POSITIONAL_SOURCE, _POSITIONAL_LENGTH = _positional_tables()
_FLOAT_WIDTH = 16


def _float_tokens(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Floats with 9 significant digits (every float32 reads back exactly), trailing zeros dropped:
    ``-123.25``, ``0.000125``, ``1.0``, and ``1.25e-7`` / ``3.4028235e38`` outside [1e-5, 1e9);
    ``NaN``/``Infinity`` as json.dumps spells them. Returns (n, w) ASCII slots and the mask of the
    bytes used."""
    x = values.astype(np.float64, copy=False)
    finite = np.isfinite(x)
    mag = np.where(finite, np.abs(x), 0.0)
    nonzero = mag > 0
    exp = np.zeros(x.size, np.int64)
    exp[nonzero] = np.floor(np.log10(mag[nonzero])).astype(np.int64)
    wild = (exp < -56) | (exp > 72)  # beyond float32's range: Python's repr below
    np.clip(exp, -56, 72, out=exp)
    mant = np.rint(mag * _POW10[80 + 8 - exp])
    for _ in range(2):  # log10 can be off by one next to powers of ten; rounding can reach 10**9
        high, low = mant >= 1e9, nonzero & (mant < 1e8)
        if not (high.any() or low.any()):
            break
        exp += high
        exp -= low
        mant = np.rint(mag * _POW10[80 + 8 - exp])
    m32 = np.where(wild, 0.0, mant).astype(np.uint32)  # < 10**9
    digits = _digit_words(m32, 3)[:, 3:]  # the 9 significant digits, ASCII
    significant = np.full(x.size, 9, np.int64)
    for p in (10, 100, 1000, 10**4, 10**5, 10**6, 10**7, 10**8):
        significant -= m32 % np.uint32(p) == 0

    chars = np.empty((x.size, _FLOAT_WIDTH), np.uint8)
    used = np.empty((x.size, _FLOAT_WIDTH), bool)
    chars[:, 0] = ord("-")
    used[:, 0] = np.signbit(x)
    positional = (exp >= -5) & (exp <= 8)
    row = np.clip(exp + 5, 0, 13)
    alphabet = np.empty((x.size, 11), np.uint8)
    alphabet[:, :9] = digits
    alphabet[:, 9] = ord(".")
    alphabet[:, 10] = ord("0")
    # One column shuffle per decimal exponent (distances mostly share one or two).
    counts = np.bincount(row, minlength=14)
    common = int(np.argmax(counts))
    chars[:, 1:] = alphabet[:, _POSITIONAL_SOURCE[common]]
    for r in np.flatnonzero(counts):
        if r != common:
            at = np.flatnonzero(row == r)
            chars[at, 1:] = alphabet[at][:, _POSITIONAL_SOURCE[r]]
    used[:, 1:] = np.arange(15) < _POSITIONAL_LENGTH[row, significant][:, None]
    for i in np.flatnonzero(~positional | ~finite | wild):
        if not finite[i] or wild[i]:
            text = _SPECIAL.get(str(x[i]), repr(float(x[i])).encode())
        else:  # d.ddde-X: the digits, then the exponent
            sig = digits[i, : significant[i]].tobytes()
            text = sig[:1] + b"." + (sig[1:] or b"0") + b"e" + str(int(exp[i])).encode()
        text = (b"-" if x[i] < 0 else b"") + text.lstrip(b"-")
        if len(text) > chars.shape[1]:
            grow = len(text) - chars.shape[1]
            chars = np.pad(chars, ((0, 0), (0, grow)))
            used = np.pad(used, ((0, 0), (0, grow)))
        chars[i, : len(text)] = np.frombuffer(text, np.uint8)
        used[i] = np.arange(chars.shape[1]) < len(text)
    return chars, used


def _label_tokens(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels as the service writes them: floats, integral ones as ``123.0``."""
    flat = values.reshape(-1)
    if flat.dtype.kind in "iub":
        return _int_tokens(flat.astype(np.int64), b".0")
    flat = flat.astype(np.float64)
    integral = np.isfinite(flat) & (flat == np.round(flat)) & (np.abs(flat) < 2**53)
    if integral.all():
        return _int_tokens(flat.astype(np.int64), b".0")
    ints, ints_used = _int_tokens(np.where(integral, flat, 0).astype(np.int64), b".0")
    floats, floats_used = _float_tokens(flat)
    width = max(ints.shape[1], floats.shape[1])
    chars = np.zeros((flat.size, width), np.uint8)
    used = np.zeros((flat.size, width), bool)
    chars[:, : ints.shape[1]] = ints
    used[:, : ints.shape[1]] = ints_used
    chars[~integral, : floats.shape[1]] = floats[~integral]
    used[~integral] = False
    used[~integral, : floats.shape[1]] = floats_used[~integral]
    return chars, used


class _Line:
    """Lines as an (n, W) byte matrix with the mask of the bytes in use, filled left to right."""

    def __init__(self, n: int, width: int) -> None:
        self.chars = np.empty((n, width), np.uint8)
        self.used = np.empty((n, width), bool)
        self.col = 0

    def const(self, text: bytes) -> None:
        end = self.col + len(text)
        self.chars[:, self.col : end] = np.frombuffer(text, np.uint8)
        self.used[:, self.col : end] = True
        self.col = end

    def tokens(self, chars: np.ndarray, used: np.ndarray, per_line: int, sep: bytes) -> None:
        """``per_line`` token slots per line, each followed by ``sep`` except the last."""
        n = self.chars.shape[0]
        if per_line == 0:
            return
        width = chars.shape[1] + len(sep)
        end = self.col + per_line * width
        region = self.chars[:, self.col : end].reshape(n, per_line, width)
        mask = self.used[:, self.col : end].reshape(n, per_line, width)
        region[:, :, : chars.shape[1]] = chars.reshape(n, per_line, -1)
        mask[:, :, : chars.shape[1]] = used.reshape(n, per_line, -1)
        region[:, :, chars.shape[1] :] = np.frombuffer(sep, np.uint8)
        mask[:, :, chars.shape[1] :] = True
        if per_line:
            mask[:, -1, chars.shape[1] :] = False
        self.col = end

    def bytes(self) -> bytes:
        assert self.col == self.chars.shape[1]
        return self.chars.reshape(-1)[self.used.reshape(-1)].tobytes()


def _format_block(labels: np.ndarray, distances: np.ndarray, predicted: np.ndarray) -> bytes:
    n, k = labels.shape
    pred = _label_tokens(predicted)
    labs = _label_tokens(labels)
    dists = _float_tokens(distances.reshape(-1))
    width = (
        len(_PREFIX)
        + pred[0].shape[1]
        + len(_MID_LABELS)
        + k * (labs[0].shape[1] + len(_SEP))
        + len(_MID_DISTANCES)
        + k * (dists[0].shape[1] + len(_SEP))
        + len(_SUFFIX)
    )
    line = _Line(n, width)
    line.const(_PREFIX)
    line.tokens(*pred, 1, b"")
    line.const(_MID_LABELS)
    line.tokens(*labs, k, _SEP)
    line.const(_MID_DISTANCES)
    line.tokens(*dists, k, _SEP)
    line.const(_SUFFIX)
    return line.bytes()


def write_verbose_jsonlines(
    fileobj: IO[bytes],
    labels: np.ndarray,
    distances: np.ndarray,
    predicted_label: np.ndarray,
) -> None:
    """Write one verbose k-NN record per row: labels (n, k), distances (n, k), predicted (n,).

    Distances are written as given (sort them ascending first, as the service does), with 9
    significant digits: float32 distances read back exactly.
    """
    labels = np.asarray(labels)
    distances = np.asarray(distances)
    predicted = np.asarray(predicted_label)
    if labels.ndim != 2 or distances.shape != labels.shape:
        raise KnnOutputError(
            f"labels and distances must both be (n, k), got {labels.shape} and {distances.shape}."
        )
    if predicted.shape != (labels.shape[0],):
        raise KnnOutputError(f"predicted_label must have shape ({labels.shape[0]},), got {predicted.shape}.")
    for start in range(0, labels.shape[0], _BLOCK_LINES):
        stop = start + _BLOCK_LINES
        fileobj.write(_format_block(labels[start:stop], distances[start:stop], predicted[start:stop]))


# --------------------------------------------------------------------------------------------------
# reader

# Byte classes. Number tokens are runs of digits, points, exponent marks, signs and the letters of
# NaN/Infinity; the keys' own letters are blanked before tokens are looked for.
(_DIGIT, _POINT, _EXP, _SIGN, _LETTER, _COMMA, _WS, _QUOTE, _LBRACKET, _RBRACKET, _LBRACE, _RBRACE, _COLON,
 _NL, _OTHER) = range(15)  # fmt: skip
_NUM = _LETTER  # a number token in a line's symbol sequence (any class <= _LETTER)
_CLASS = np.full(256, _OTHER, np.uint8)
_CLASS[list(b"aNInfity")] = _LETTER
_CLASS[list(b"eE")] = _EXP
_CLASS[list(b"+-")] = _SIGN
_CLASS[ord(".")] = _POINT
_CLASS[list(b"0123456789")] = _DIGIT
for _byte, _cls in {
    b",": _COMMA,
    b" ": _WS,
    b"\t": _WS,
    b"\r": _WS,
    b'"': _QUOTE,
    b"[": _LBRACKET,
    b"]": _RBRACKET,
    b"{": _LBRACE,
    b"}": _RBRACE,
    b":": _COLON,
    b"\n": _NL,
}.items():
    _CLASS[_byte[0]] = _cls
_CLASS_TABLE = _CLASS.tobytes()
# A line's symbols (whitespace dropped, each number one _NUM, keys blanked) are "{", then per field
# ":" and its value (a _NUM, or "[" _NUM "," _NUM ... "]"), "," between fields, then "}" and the
# newline. The fields may come in any order; a block is read fast when all its lines share one.
_KEYS = {b'"predicted_label"': "predicted", b'"labels"': "labels", b'"distances"': "distances"}
_TO_SPACE = bytes.maketrans(b',[]{}:"\n\r\t', b" " * 10)


def _block_fast(block: bytearray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Lines in the regular layout (``block`` ends with a newline) -> (neighbours per line, labels,
    distances) as flat arrays, line after line; None when any line is not in that layout."""
    raw = np.frombuffer(block, np.uint8)
    classes = block.translate(_CLASS_TABLE)  # (translate: faster than a take)
    cls = np.frombuffer(classes, np.uint8)
    newlines = np.flatnonzero(cls == _NL)
    n = newlines.size
    quote_at = np.flatnonzero(cls == _QUOTE)
    if quote_at.size != 6 * n:
        return None
    quotes = quote_at.reshape(n, 6)
    if n and (np.any(quotes[1:, 0] < newlines[:-1]) or np.any(quotes[:, 5] > newlines)):
        return None  # six quotes on every line
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    order = []
    blank = []
    for i in range(3):
        at = quotes[:, 2 * i]
        key = bytes(raw[at[0] : quotes[0, 2 * i + 1] + 1])  # as on the first line, on every line
        if key not in _KEYS or _KEYS[key] in order or not np.all(quotes[:, 2 * i + 1] - at == len(key) - 1):
            return None
        windows = np.lib.stride_tricks.sliding_window_view(raw, len(key))[at]
        if not np.all(windows == np.frombuffer(key, np.uint8)):
            return None
        order.append(_KEYS[key])
        blank.append((at[:, None] + np.arange(len(key))).reshape(-1))
    keys_at = np.concatenate(blank)
    cls[keys_at] = _WS
    raw[keys_at] = ord(" ")  # raw is a view of block: the text parsed below has no keys

    # One symbol per punctuation byte and per number (the first byte of each run of number bytes).
    is_num = cls <= _LETTER
    symbol = cls != _WS
    symbol[1:] &= ~(is_num[1:] & is_num[:-1])
    symbol_at = np.flatnonzero(symbol)
    seq = np.maximum(cls[symbol_at], _NUM)
    ends = np.flatnonzero(seq == _NL)
    per_line = np.diff(ends, prepend=-1)  # symbols per line, newline included
    list_len = (per_line - 13) // 2  # symbols of each list: 2k - 1 (k >= 1) or 0
    k = (list_len + 1) // 2
    if np.any(per_line != 13 + 2 * list_len) or np.any(list_len != np.maximum(2 * k - 1, 0)):
        return None
    if not _symbols_match(seq, per_line, list_len, order):
        return None

    total = n + 2 * int(k.sum())
    number_at = np.flatnonzero(seq == _NUM)  # a newline symbol follows every line's last number
    starts, following = symbol_at[number_at], symbol_at[number_at + 1]
    padded = np.concatenate([np.zeros(_PAD, np.uint8), raw])
    words = np.ndarray((padded.size - 7,), "<u8", padded, strides=(1,))
    fields = _field_tokens(k, order)
    split = _parse_split(raw, classes, is_num, words, starts, following, fields)
    if split is not None:
        return k, split[0], split[1]
    numbers = _parse_decimals(raw, classes, is_num, words, starts, following)
    if numbers is None:  # NaN, Infinity, long mantissas...: numpy's own parser
        lead = raw[starts]
        after = raw[np.minimum(starts + 1, raw.size - 1)]
        if not np.all(
            (cls[starts] == _DIGIT)
            | (lead == ord("N"))
            | (lead == ord("I"))
            | ((lead == ord("-")) & ((_CLASS[after] == _DIGIT) | (after == ord("I"))))
        ):
            return None  # "+1", ".5", "-.5": not JSON
        text = bytes(block.translate(_TO_SPACE))  # np.fromstring wants read-only bytes
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # numpy warns (and stops) on text it cannot parse
                numbers = np.fromstring(text, dtype=np.float64, sep=" ")  # type: ignore[call-overload]
        except (ValueError, DeprecationWarning):
            return None
    if numbers.size != total:
        return None
    return _split_numbers(numbers, k, fields)


_POW10_EXACT = 10.0 ** np.arange(23)  # exact doubles
_SWAR_MASK = np.uint64(0x000000FF000000FF)
_SWAR_MUL1 = np.uint64(100 + (1_000_000 << 32))
_SWAR_MUL2 = np.uint64(1 + (10_000 << 32))


def _eight_digits(words: np.ndarray) -> np.ndarray:
    """Values of 8 digits (0-9, one per byte, most significant first) in little-endian uint64s."""
    v = words * np.uint64(10) + (words >> np.uint64(8))
    return (
        ((v & _SWAR_MASK) * _SWAR_MUL1) + (((v >> np.uint64(16)) & _SWAR_MASK) * _SWAR_MUL2)
    ) >> np.uint64(32)


_PAD = 24  # zero bytes before a block's text, so that 24-byte windows ending in it stay in bounds
# _KEEP[c]: the last c bytes of a little-endian uint64 (where the right-aligned digits are).
_KEEP = np.array([0] + [(1 << 64) - (1 << (8 * (8 - c))) for c in range(1, 9)], np.uint64)
_ZEROS = np.uint64(0x3030303030303030)


def _digits_value(words: np.ndarray, end: np.ndarray, n_digits: np.ndarray) -> np.ndarray | None:
    """uint64 value of the ``n_digits[i]`` (at most 24) ASCII digits ending at ``end[i]``; None
    when a value does not fit (more than 19 digits after leading zeros).

    ``words[p]``: the 8 bytes at ``p - _PAD`` of the text as a little-endian uint64 (an overlapping
    view, so one gather fetches 8 bytes).
    """
    count = max(-(-int(n_digits.max()) // 8), 1) if n_digits.size else 1
    value = np.zeros(end.size, np.uint64)
    low = int(n_digits.min()) if n_digits.size else 0
    for j in range(count):
        before = 8 * (count - 1 - j)  # digits after this word
        word = words[end + (_PAD - 8 - before)]
        if low >= before + 8:  # every number fills this word
            digits = word - _ZEROS
        else:
            keep = _KEEP[np.minimum(np.maximum(n_digits - before, 0), 8)]
            digits = (word & keep) - (_ZEROS & keep)
        part = _eight_digits(digits)
        if j == 0 and count == 3 and np.any(part >= 1000):
            return None  # 10**19 and beyond do not fit in a uint64
        if j:
            value *= np.uint64(10**8)
        value += part
    return value


def _parse_decimals(
    raw: np.ndarray,
    classes: bytearray,
    is_num: np.ndarray,
    words: np.ndarray,
    starts: np.ndarray,
    next_symbol: np.ndarray,
    reserved: tuple[int, int] | None = None,
) -> np.ndarray | None:
    """Values of the number tokens starting at ``starts``, all JSON decimals (``-12.5``, ``3``,
    ``1.25e-3``) of at most 19 significant digits; None when any token has another form.

    ``next_symbol``: where the symbol after each token starts (its end, unless whitespace follows);
    ``words``: the overlapping uint64 view of ``_digits_value``. ``reserved``: (points, signs) of
    the block that belong to tokens read elsewhere; then ``starts`` may be any subset of the
    tokens, in any order, and nothing is searched for (None when the quick checks do not hold).
    The digits before and after the point are read as integers, 8 at a time with integer
    arithmetic on right-aligned 8-byte words; the value is then one float operation away (mantissa
    times or over an exact power of ten), as in strtod's fast path: exact for mantissas below
    2**53, within one unit in the last place beyond, which float32 distances and integral labels
    never see.
    """
    count = starts.size
    if count == 0:
        return np.zeros(0)
    cls = np.frombuffer(classes, np.uint8)
    if np.count_nonzero(cls == _LETTER):
        return None
    ends = next_symbol
    if not np.all(is_num[ends - 1]):
        if reserved is not None:
            return None
        ends = np.flatnonzero(is_num[:-1] & ~is_num[1:]) + 1
        if ends.size != count:
            return None
    neg = raw[starts] == ord("-")
    first = starts + neg
    if not np.all(cls[first] == _DIGIT):
        return None
    other_points, other_signs = reserved or (0, 0)

    # The point follows the first digit (1.25, 0.5, 2.5e-3) or precedes the last (123.0); else search.
    after_first = raw[first + 1] == ord(".")
    before_last = (raw[ends - 2] == ord(".")) & (ends - 2 > first)
    has_point = after_first | before_last
    point = np.where(after_first, first + 1, ends - 2)
    if np.count_nonzero(has_point) != np.count_nonzero(cls == _POINT) - other_points:
        if reserved is not None:
            return None
        points = np.flatnonzero(cls == _POINT)
        point_tokens = np.searchsorted(starts, points, side="right") - 1
        if np.any(np.diff(point_tokens) == 0):
            return None  # two points in a number
        has_point = np.zeros(count, bool)
        has_point[point_tokens] = True
        point[point_tokens] = points
    # The exponent ("e5", "e-5", "e+12", "e-123") ends the number; else search.
    n_exp = np.count_nonzero(cls == _EXP)
    mant_end = ends.copy()
    has_exp = np.zeros(count, bool)
    if n_exp:
        for back in (2, 3, 4, 5):
            at = ends - back
            hit = ~has_exp & (at > first) & (cls[at] == _EXP)
            has_exp |= hit
            np.copyto(mant_end, at, where=hit)
        if np.count_nonzero(has_exp) != n_exp:
            if reserved is not None:
                return None
            exps = np.flatnonzero(cls == _EXP)
            exp_tokens = np.searchsorted(starts, exps, side="right") - 1
            if np.any(np.diff(exp_tokens) == 0):
                return None  # two exponents in a number
            has_exp[:] = False
            has_exp[exp_tokens] = True
            mant_end[exp_tokens] = exps
    exp_sign = np.zeros(count, np.int64)
    n_signs = np.count_nonzero(cls == _SIGN) - int(np.count_nonzero(neg)) - other_signs  # not leading
    if n_signs:
        sign = raw[np.minimum(mant_end + 1, raw.size - 1)]
        signed = has_exp & ((sign == ord("-")) | (sign == ord("+")))
        if np.count_nonzero(signed) != n_signs:
            return None  # a sign that is neither leading nor right after an "e"
        exp_sign[signed] = np.where(sign[signed] == ord("-"), -1, 1)
    int_end = np.where(has_point, point, mant_end)
    int_digits = int_end - first
    frac_digits = np.where(has_point, mant_end - point - 1, 0)
    if np.any(int_digits < 1) or np.any(frac_digits < 0) or np.any(has_point & (frac_digits < 1)):
        return None
    # Up to 19 significant digits fit in a uint64 (a "0." fraction may have leading zeros on top).
    zero_int = (int_digits == 1) & (raw[first] == ord("0"))
    if np.any(np.where(zero_int, frac_digits > 24, int_digits + frac_digits > 19)):
        return None

    # One integer per token; most need one word of digit arithmetic at most: labels "123.0" (the
    # fraction is a lone 0), distances "1.2345679e-3" (the integer part is one digit).
    mantissa = (raw[first] - np.uint8(ord("0"))).astype(np.uint64)
    longer = np.flatnonzero(int_digits > 1)
    if longer.size:
        value = _digits_value(words, int_end[longer], int_digits[longer])
        if value is None:
            return None
        mantissa[longer] = value
    mantissa *= _POW10_INT[np.minimum(frac_digits, 19)]  # (larger: only "0." numbers, times 0)
    fraction = np.flatnonzero((frac_digits > 1) | ((frac_digits == 1) & (raw[mant_end - 1] != ord("0"))))
    if fraction.size == count:  # (no gathers when every number has fraction digits)
        value = _digits_value(words, mant_end, frac_digits)
        if value is None:
            return None
        mantissa += value
    elif fraction.size:
        value = _digits_value(words, mant_end[fraction], frac_digits[fraction])
        if value is None:
            return None
        mantissa[fraction] += value
    scale = -frac_digits
    if n_exp:
        exp_tokens = np.flatnonzero(has_exp)
        exp_start = mant_end[exp_tokens] + 1 + (exp_sign[exp_tokens] != 0)
        exp_digits = ends[exp_tokens] - exp_start
        if np.any(exp_digits < 1) or np.any(exp_digits > 3):
            return None
        exponent = _digits_value(words, ends[exp_tokens], exp_digits).astype(np.int64)  # type: ignore[union-attr]
        scale[exp_tokens] += np.where(exp_sign[exp_tokens] < 0, -exponent, exponent)
    values = mantissa.astype(np.float64)
    low, high = int(scale.min()), int(scale.max())
    if low >= -22 and high <= 0:
        values /= _POW10_EXACT[-scale]
    elif low >= -22 and high <= 22:
        up = scale >= 0
        values = np.where(
            up, values * _POW10_EXACT[np.where(up, scale, 0)], values / _POW10_EXACT[np.where(up, 0, -scale)]
        )
    else:
        values = values * np.power(10.0, scale)
    np.negative(values, out=values, where=neg)
    return values


def _field_tokens(k: np.ndarray, order: list[str]) -> dict[str, np.ndarray]:
    """Indices (among the block's numbers, line after line) of each field's numbers."""
    width = 1 + 2 * k
    line_start = np.cumsum(width) - width
    start = {}
    offset = np.zeros_like(k)
    for field in order:
        start[field] = line_start + offset
        offset = offset + (1 if field == "predicted" else k)
    if np.all(k == k[0]):
        size = int(k[0])
        out = {"predicted": start["predicted"]}
        for field in ("labels", "distances"):
            out[field] = (start[field][:, None] + np.arange(size)).reshape(-1)
        return out
    within = np.arange(int(k.sum())) - np.repeat(np.cumsum(k) - k, k)
    return {
        "predicted": start["predicted"],
        "labels": np.repeat(start["labels"], k) + within,
        "distances": np.repeat(start["distances"], k) + within,
    }


def _parse_split(
    raw: np.ndarray,
    classes: bytearray,
    is_num: np.ndarray,
    words: np.ndarray,
    starts: np.ndarray,
    following: np.ndarray,
    fields: dict[str, np.ndarray],
) -> tuple[np.ndarray, np.ndarray] | None:
    """(labels, distances) when every label is written ``123.0`` (the service's and our writer's
    spelling): labels are then read as integers only, the rest as decimals. None otherwise."""
    at, ends = starts[fields["labels"]], following[fields["labels"]]
    if not np.all(is_num[ends - 1]):
        return None
    neg = raw[at] == ord("-")
    first = at + neg
    digits = ends - 2 - first
    cls = np.frombuffer(classes, np.uint8)
    if at.size and not (
        np.all(raw[ends - 2] == ord("."))
        & np.all(raw[ends - 1] == ord("0"))
        & np.all(cls[first] == _DIGIT)
        & (int(digits.min()) >= 1)
        & (int(digits.max()) <= 18)
    ):
        return None
    value = _digits_value(words, ends - 2, digits)
    assert value is not None  # at most 18 digits
    labels = value.astype(np.int64)
    np.negative(labels, out=labels, where=neg)
    rest = np.concatenate([fields["predicted"], fields["distances"]])
    numbers = _parse_decimals(
        raw, classes, is_num, words, starts[rest], following[rest], (at.size, int(np.count_nonzero(neg)))
    )
    if numbers is None:
        return None
    return labels, numbers[fields["predicted"].size :].astype(np.float32)


def _symbols_match(seq: np.ndarray, per_line: np.ndarray, list_len: np.ndarray, order: list[str]) -> bool:
    """Does each line's symbol sequence read as the fields in ``order`` (see _KEYS)?"""
    n_lines = per_line.size
    if np.all(per_line == per_line[0]):  # one k for the whole block: compare with one line
        return bool(np.all(seq.reshape(n_lines, -1) == _line_symbols(int(list_len[0]), order)))
    # Lines of several lengths: the expected symbol at each position, segment by segment.
    pos = np.arange(seq.size) - np.repeat(np.cumsum(per_line) - per_line, per_line)
    lists = np.repeat(list_len, per_line)
    expected = np.empty_like(seq)
    offset = np.zeros_like(pos)
    for i, field in enumerate(order):
        head = [_LBRACE, _COLON] if i == 0 else [_COMMA, _COLON]
        for symbol in head + ([_NUM] if field == "predicted" else [_LBRACKET]):
            expected[pos == offset] = symbol
            offset += 1
        if field != "predicted":
            inside = (pos >= offset) & (pos < offset + lists)
            expected[inside] = np.where((pos[inside] - offset[inside]) % 2 == 0, _NUM, _COMMA)
            offset += lists
            expected[pos == offset] = _RBRACKET
            offset += 1
    for symbol in (_RBRACE, _NL):
        expected[pos == offset] = symbol
        offset += 1
    return bool(np.array_equal(seq, expected))


def _line_symbols(list_len: int, order: list[str]) -> np.ndarray:
    items = np.where(np.arange(list_len) % 2 == 0, _NUM, _COMMA)
    parts: list[Any] = []
    for i, field in enumerate(order):
        parts += [[_LBRACE, _COLON] if i == 0 else [_COMMA, _COLON]]
        parts += [[_NUM]] if field == "predicted" else [[_LBRACKET], items, [_RBRACKET]]
    parts.append([_RBRACE, _NL])
    return np.concatenate(parts).astype(np.uint8)


def _split_numbers(
    numbers: np.ndarray, k: np.ndarray, fields: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """All numbers of a block (see ``_field_tokens``) -> (k, labels, distances), or None when a
    label is not an integer."""
    label_values = numbers[fields["labels"]]
    with np.errstate(invalid="ignore"):
        labels = label_values.astype(np.int64)
    if not np.array_equal(labels, label_values):  # non-integral, NaN or out of range
        return None
    return k, labels, numbers[fields["distances"]].astype(np.float32)


def _block_slow(lines: list[bytes], first_line: int, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    counts, all_labels, all_distances = [], [], []
    for i, line in enumerate(lines):
        where = f"k-NN output {name} line {first_line + i}"
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise KnnOutputError(f"{where} is not valid JSON: {e}.") from e
        if not isinstance(record, dict):
            raise KnnOutputError(f"{where} is not a JSON object.")
        missing = [key for key in ("labels", "distances") if key not in record]
        if missing:
            raise KnnOutputError(f"{where} has no {missing} (keys: {sorted(record)}).")
        try:
            labels = np.asarray(record["labels"], dtype=np.float64)
            distances = np.asarray(record["distances"], dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise KnnOutputError(f"{where}: 'labels' and 'distances' must be lists of numbers ({e}).") from e
        if labels.ndim != 1 or distances.shape != labels.shape:
            raise KnnOutputError(
                f"{where}: 'labels' ({labels.size}) and 'distances' ({distances.size}) must be lists "
                "of the same length."
            )
        if not np.array_equal(labels, np.round(labels)) or (labels.size and np.abs(labels).max() >= 2**63):
            raise KnnOutputError(f"{where}: 'labels' must be integral (item indices).")
        counts.append(labels.size)
        all_labels.append(labels.astype(np.int64))
        all_distances.append(distances)
    return (
        np.array(counts, np.int64),
        np.concatenate(all_labels) if all_labels else np.zeros(0, np.int64),
        np.concatenate(all_distances) if all_distances else np.zeros(0, np.float32),
    )


def _blocks(data: bytes) -> list[tuple[int, int, int]]:
    """(start, stop, first line number) of blocks of whole lines: at most _BLOCK_LINES lines and
    about _BLOCK_BYTES bytes each; trailing blank lines are left out."""
    end = len(data)
    while end and data[end - 1] in b" \t\r\n":
        end -= 1
    if end == 0:
        return []
    newlines = np.flatnonzero(np.frombuffer(data, np.uint8, count=end) == ord("\n"))
    line_ends = np.append(newlines + 1, end)  # exclusive ends of the lines (newline included)
    out = []
    line, start = 0, 0
    while line < line_ends.size:
        by_bytes = int(np.searchsorted(line_ends, start + _BLOCK_BYTES, "right"))
        stop_line = max(min(line + _BLOCK_LINES, by_bytes), line + 1)
        stop = int(line_ends[stop_line - 1])
        out.append((start, stop, line + 1))
        line, start = stop_line, stop
    return out


def read_verbose_jsonlines(source: Source) -> tuple[np.ndarray, np.ndarray]:
    """Read verbose k-NN output -> (labels int64 (n, k), distances float32 (n, k)).

    ``source``: path, bytes or binary file. Blank lines at the end are ignored; rows shorter than
    the longest are padded with -1 / nan. Raises ``KnnOutputError`` naming the line number.
    """
    data, name = read_source(source, "k-NN output", KnnOutputError)
    parts = []
    for start, stop, first_line in _blocks(data):
        block = bytearray(memoryview(data)[start:stop])
        if not block.endswith(b"\n"):
            block += b"\n"
        fast = _block_fast(block)  # (blanks the keys of block)
        if fast is None:
            lines = [line.rstrip(b"\r") for line in data[start:stop].rstrip(b"\n").split(b"\n")]
            fast = _block_slow(lines, first_line, name)
        parts.append(fast)
    counts = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    labels = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
    distances = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0, np.float32)
    n = counts.size
    k = int(counts.max()) if n else 0
    if n and np.all(counts == k):
        return labels.reshape(n, k), distances.reshape(n, k)
    out_labels = np.full((n, k), -1, dtype=np.int64)
    out_distances = np.full((n, k), np.nan, dtype=np.float32)
    rows = np.repeat(np.arange(n), counts)
    cols = np.arange(labels.size) - np.repeat(np.cumsum(counts) - counts, counts)
    out_labels[rows, cols] = labels
    out_distances[rows, cols] = distances
    return out_labels, out_distances
