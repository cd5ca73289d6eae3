"""Cleaning stage: turn a mapped chunk into payloads or rejects, vectorised.

Owns: normalising values (trim, case, formats), the API's field rules, the
types of custom attributes, and the reasons rows are refused. Every row of a
chunk leaves either as a :class:`~importer.records.Customer` payload or as a
:class:`~importer.records.Reject` (``--on-invalid drop-field`` adds a reject
marked ``dropped_field`` to a customer that is still sent). Works column by
column with pyarrow, numpy and pandas: a rule runs once per distinct value,
or row by row in pyarrow for a column of mostly different values; per-value
Python only where a value has to go to a validation library (each distinct
value once). The kept rows leave as a :class:`~importer.records.CustomerBlock`
whose payloads are already encoded as the JSON a request carries (see
:func:`_customers`); no Python object is made per kept row here.

Must not: read files, send anything, merge repeated customers (that is
:mod:`importer.dedupe`), or keep state between chunks other than the column
types the caller passes in and bounded caches of pure functions.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache, lru_cache
from typing import Any

import numpy as np
import orjson
import pandas as pd
import phonenumbers
import pyarrow as pa
import pyarrow.compute as pc
from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email

from .errors import UsageError
from .mapping import ColumnMapping
from .options import ImportOptions
from .records import Customer, CustomerBlock, Reject
from .source import Chunk

IDENTIFIERS = ("email", "customer_id")
#: Fields with a fixed rule; they are never type-inferred.
STANDARD_FIELDS = frozenset(
    {
        "email",
        "customer_id",
        "phone_number",
        "firstname",
        "lastname",
        "gender",
        "joined_at",
        "unsubscribed",
        "unsubscribed_at",
        "subscription_groups",
    }
)
#: The flat pair that builds one ``subscription_groups`` entry per row.
GROUP_ID, GROUP_SUBSCRIBED = "subscription_group_id", "subscription_group_subscribed"
COLUMN_TYPES = ("int", "float", "bool", "date", "string")

MAX_EMAIL = 64
MAX_NAME = 64
#: The API's phone rule: ``+``, no ``0`` after it, 6 to 14 characters.
E164 = re.compile(r"^\+[1-9]\d{4,12}$")
#: Integers beyond this lose precision in JSON consumers that read numbers as doubles.
MAX_SAFE_INT = 2**53

GENDERS = {
    **dict.fromkeys(("m", "male", "man", "boy", "masculine", "mr", "h"), "male"),
    **dict.fromkeys(("f", "female", "woman", "girl", "feminine", "w", "mrs", "ms"), "female"),
    **dict.fromkeys(
        (
            "u",
            "unknown",
            "unspecified",
            "not specified",
            "prefer not to say",
            "x",
            "other",
            "diverse",
            "non-binary",
            "nonbinary",
        ),
        "unknown",
    ),
}
BOOLEANS = {
    **dict.fromkeys(("true", "t", "yes", "y", "1"), True),
    **dict.fromkeys(("false", "f", "no", "n", "0"), False),
}

# A conservative shape for plain ASCII addresses that email-validator accepts
# unchanged; anything else (unicode, quoted parts, IDNA, odd domains) goes to
# the library.
_ATOM = r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"(?!xn--)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_FAST_EMAIL = rf"{_ATOM}(?:\.{_ATOM})*@(?:{_LABEL}\.)+[a-z]{{2,63}}"
# Internationalised local parts made of letters and numbers (which the library
# accepts unchanged when already in NFC) before a plain ASCII domain; at most
# 63 characters so the address stays within the library's 254-byte limit.
_INTL_ATOM = r"[\w!#$%&'*+/=?^`{|}~-]+"
_FAST_INTL_EMAIL = rf"(?=.{{1,63}}$){_INTL_ATOM}(?:\.{_INTL_ATOM})*@(?:{_LABEL}\.)+[a-z]{{2,63}}"
_SPECIAL_SUFFIXES = tuple(f".{name}" for name in SPECIAL_USE_DOMAIN_NAMES)

# Phone shapes normalised without the library.
_NANP_INTL = r"\+1[ .-]?(?:\([2-9]\d{2}\)|[2-9]\d{2})[ .-]?[2-9]\d{2}[ .-]?\d{4}"
_NANP_NATIONAL = r"(?:\([2-9]\d{2}\) ?|[2-9]\d{2}[ .-]?)[2-9]\d{2}[ .-]?\d{4}"
_UK_MOBILE = r"\+44 ?7\d{3} ?\d{6}"
_SEPARATORS = r"[ .()-]"
_NANP_REGIONS = frozenset(phonenumbers.COUNTRY_CODE_TO_REGION_CODE[1])

_INT_TEXT = re.compile(r"^-?(?:0|[1-9]\d*)$")
_FLOAT_TEXT = re.compile(r"^-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?$")
_DATE_TEXT = r"\d{4}-\d{2}-\d{2}"
_DATETIME_TEXT = re.compile(
    r"^\d{4}[-/]\d{2}[-/]\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?"
    r"(?:Z|[+-]\d{2}(?::?\d{2})?)?)?$"
)

#: Marks a value left out of the payload (``None`` is a JSON null, sent only
#: with ``--empty-as-null``).
_OMIT: Any = object()


class InvalidRecord(UsageError):
    """``--on-invalid stop`` met a row it would have rejected; names its record and line."""


@dataclass
class CleanResult:
    """The outcome of cleaning one chunk."""

    customers: Sequence[Customer] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)


@dataclass
class _Cleaned:
    """One target field of a chunk after cleaning, aligned with the chunk's rows.

    The payload values (or :data:`_OMIT`) are held either per row in ``rows``
    or, when the field was cleaned once per distinct value, as ``distinct``
    values and per-row ``codes`` into them; :attr:`values` gives them per row
    either way. ``reasons`` holds a reason where the cell was invalid, else
    None; ``column`` and ``raw`` say which input cell a reject should quote.
    """

    rows: np.ndarray | None
    reasons: np.ndarray
    column: np.ndarray
    raw: np.ndarray
    empty: np.ndarray
    #: Where ``reasons`` holds a reason.
    bad: np.ndarray
    distinct: np.ndarray | None = None
    codes: np.ndarray | None = None
    #: Where ``distinct`` holds :data:`_OMIT`, when every other distinct value is a str,
    #: or with ``int_values`` an int (then the field is encoded as JSON in pyarrow, see
    #: :func:`_encoded_field`).
    text_omitted: np.ndarray | None = None

    #: The distinct values as pyarrow text, null where omitted; ``distinct`` is then
    #: made from it only when asked for. Without ``codes``: one value per row.
    _text: pa.StringArray | None = None
    int_values: bool = False

    @property
    def values(self) -> np.ndarray:
        """The payload value (or :data:`_OMIT`) of each row."""
        if self.rows is None:
            distinct = self.distinct_values()
            self.rows = distinct if self.codes is None else distinct[self.codes]
        return self.rows

    def distinct_values(self) -> np.ndarray:
        """``distinct``, made from the pyarrow text when the field has only that."""
        if self.distinct is None:
            assert self._text is not None and self.text_omitted is not None
            values = self._text.to_numpy(zero_copy_only=False)
            values[self.text_omitted] = _OMIT
            self.distinct = values
        return self.distinct

    def text(self) -> pa.StringArray | None:
        """The distinct values as a pyarrow string array, null where omitted (text fields only)."""
        if (
            self._text is None
            and self.text_omitted is not None
            and self.codes is not None
            and not self.int_values
        ):
            self._text = pa.array(self.distinct, pa.string(), mask=self.text_omitted)
        return self._text

    def values_at(self, positions: np.ndarray) -> list[Any]:
        """The payload values (or :data:`_OMIT`) of the rows at ``positions``, no others made."""
        if self.rows is not None:
            return self.rows[positions].tolist()
        slots = positions if self.codes is None else self.codes[positions]
        if self.distinct is None and self._text is not None and self.text_omitted is not None:
            omitted = self.text_omitted[slots].tolist()
            got = self._text.take(slots).to_pylist()
            return [_OMIT if o else v for v, o in zip(got, omitted, strict=True)]
        return self.distinct_values()[slots].tolist()


# -- column preparation --------------------------------------------------------

#: Every character Python's ``str.strip()`` removes, so pyarrow trims exactly the same.
#: Written out: finding them among all code points costs a tenth of a second per run
#: (a test checks the list against ``str.isspace``).
_WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)


@dataclass
class _Prepared:
    """One input column, trimmed, with a mask of empty cells.

    ``text`` is the trimmed column as a pyarrow string array when every
    non-missing cell is text (CSV always, JSONL usually); then ``values`` is
    built from it only when a caller asks. Otherwise ``text`` is None and
    ``values`` holds the cells as Python objects.

    ``raw`` holds the cells as read, for rejects to quote. When the column
    came as Arrow text (``original``), they are made Python objects only when
    asked for; :meth:`raw_where` makes only the ones a reject needs.
    """

    _raw: np.ndarray | None
    empty: np.ndarray
    text: pa.StringArray | None = None
    _values: np.ndarray | None = None
    original: pa.StringArray | None = None

    @property
    def values(self) -> np.ndarray:
        if self._values is None:
            assert self.text is not None
            self._values = self.text.to_numpy(zero_copy_only=False)
        return self._values

    @property
    def raw(self) -> np.ndarray:
        if self._raw is None:
            assert self.original is not None
            self._raw = self.original.to_numpy(zero_copy_only=False)
        return self._raw

    def raw_where(self, wanted: np.ndarray) -> np.ndarray:
        """``raw``, or when it was not made yet, the cells where ``wanted`` holds (else None)."""
        if self._raw is not None or self.original is None:
            return self.raw
        out = np.full(len(wanted), None, object)
        at = np.flatnonzero(wanted)
        if len(at):
            out[at] = self.original.take(at).to_numpy(zero_copy_only=False)
        return out


def _prepare_column(series: pd.Series) -> _Prepared:
    """Trim text cells and find the empty ones, in pyarrow when the column is text."""
    raw = series.to_numpy(dtype=object)
    arr = None
    if pd.api.types.infer_dtype(raw, skipna=True) in ("string", "empty"):
        arr = _as_arrow_text(raw, checked=True)
    if arr is not None:
        text = pc.utf8_trim(arr, characters=_WHITESPACE)
        return _Prepared(raw, _empty_cells(text), text)
    values, empty = _prepare(series)
    return _Prepared(raw, empty, None, values)


def _prepare_frame(frame: pd.DataFrame, sources: list[str]) -> dict[str, _Prepared]:
    """:func:`_prepare_column` for each of ``sources``, the text columns converted at once.

    The cells of a chunk are created row by row, so reading them in row order
    (one pyarrow conversion of the whole block) is several times faster than
    column by column. Columns that are not all text are prepared one by one.
    """
    prepared: dict[str, _Prepared] = {}
    all_objects = all(pd.api.types.is_object_dtype(dtype) for dtype in frame.dtypes)
    if len(frame) and sources and frame.columns.is_unique and all_objects:
        cells = frame.to_numpy(dtype=object)
        positions = [frame.columns.get_loc(src) for src in sources]
        if positions != list(range(cells.shape[1])):
            cells = cells[:, positions]
        prepared = _trim_block(cells, list(sources), _as_arrow_text(cells.ravel()))
        if not prepared:
            text = [j for j, src in enumerate(sources) if _all_text(cells[:, j])]
            if text:
                block = cells[:, text]
                names = [sources[j] for j in text]
                prepared = _trim_block(block, names, _as_arrow_text(block.ravel(), checked=True))
    for src in sources:
        if src not in prepared:
            prepared[src] = _prepare_column(frame[src])
    return prepared


def _prepare_arrow(cells: pa.RecordBatch, sources: list[str]) -> dict[str, _Prepared]:
    """:func:`_prepare_column` for each of ``sources`` of a chunk that came as Arrow text.

    The cells are trimmed and tested where they are; none becomes a Python
    str here (``raw`` and ``values`` are made later, and only if needed).
    """
    prepared: dict[str, _Prepared] = {}
    for src in sources:
        original = cells.column(src)
        text = _trim(original)
        prepared[src] = _Prepared(None, _empty_cells(text), text, original=original)
    return prepared


def _empty_cells(text: pa.StringArray) -> np.ndarray:
    """Where ``text`` is null or has no characters (read off its offsets)."""
    empty = _byte_lengths(text) == 0
    if text.null_count:
        empty |= ~_mask(text.is_valid())
    return empty


def _byte_lengths(text: pa.StringArray) -> np.ndarray:
    """The length in bytes of each value of ``text`` (0 for null), read off its offsets."""
    return np.diff(_offsets_and_bytes(text)[0])


_NO_BYTES = np.zeros(0, np.uint8)


def _offsets_and_bytes(text: pa.StringArray) -> tuple[np.ndarray, np.ndarray]:
    """``text``'s value offsets (``len(text) + 1`` of them) and its whole data buffer."""
    _, offsets_buf, data_buf = text.buffers()
    if offsets_buf is None:  # an empty array may have no buffers
        return np.zeros(1, np.int32), _NO_BYTES
    offsets = np.frombuffer(offsets_buf, np.int32)[text.offset : text.offset + len(text) + 1]
    return offsets, _NO_BYTES if data_buf is None else np.frombuffer(data_buf, np.uint8)


#: Bytes that begin, and bytes that end, a character of ``_WHITESPACE`` in UTF-8.
_SPACE_FIRST = np.zeros(256, bool)
_SPACE_LAST = np.zeros(256, bool)
for _char in _WHITESPACE:
    _SPACE_FIRST[_char.encode()[0]] = _SPACE_LAST[_char.encode()[-1]] = True


def _trim(text: pa.StringArray) -> pa.StringArray:
    """``text`` without leading or trailing whitespace (see :data:`_WHITESPACE`).

    Most columns have none; a look at each value's first and last byte finds
    that out for a fraction of the cost of trimming.
    """
    offsets, data = _offsets_and_bytes(text)
    if not len(data):
        return text
    # An empty value points at its neighbour's bytes: at worst a needless trim.
    top = len(data) - 1
    firsts, lasts = np.minimum(offsets[:-1], top), np.maximum(offsets[1:] - 1, 0)
    if not (_SPACE_FIRST[data[firsts]].any() or _SPACE_LAST[data[lasts]].any()):
        return text
    return pc.utf8_trim(text, characters=_WHITESPACE)


def _all_text(values: np.ndarray) -> bool:
    """Every cell is text or missing (and not all missing)."""
    return bool(pd.api.types.infer_dtype(values, skipna=True) == "string")


def _as_arrow_text(values: np.ndarray, checked: bool = False) -> pa.StringArray | None:
    """``values`` as a pyarrow string array (missing cells null), or None if they are not all text.

    Without ``checked``, pyarrow infers the type: text and missing values give
    ``string``, while bytes give ``binary`` and numbers, booleans or lists raise.
    """
    try:
        arr = pa.array(values, type=pa.string() if checked else None, from_pandas=True)
    except (pa.ArrowException, UnicodeError):
        # Also text pyarrow cannot hold (lone surrogates): the general path takes it.
        return None
    return arr if isinstance(arr, pa.StringArray) else None


def _trim_block(
    cells: np.ndarray, names: list[str], flat: pa.StringArray | None
) -> dict[str, _Prepared]:
    if flat is None:
        return {}
    trimmed = pc.utf8_trim(flat, characters=_WHITESPACE)
    empty_cells = _empty_cells(trimmed).reshape(cells.shape)
    width = len(names)
    return {
        src: _Prepared(
            cells[:, j],
            np.ascontiguousarray(empty_cells[:, j]),
            trimmed if width == 1 else trimmed.take(np.arange(j, len(trimmed), width)),
        )
        for j, src in enumerate(names)
    }


def _prepare(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Trim text cells; return the values and a mask of empty cells.

    Empty means missing, NaN, or text that is blank after trimming. Text such
    as ``"NA"``, ``"null"`` or ``"nan"`` is data, not a missing value.
    """
    values = series.to_numpy(dtype=object, copy=True)
    if pd.api.types.infer_dtype(values, skipna=False) == "string":
        stripped = pd.Series(values, dtype=object).str.strip().to_numpy(dtype=object)
        return stripped, stripped == ""
    is_str = _is_text(values)
    empty = np.zeros(len(values), bool)
    if is_str.any():
        stripped = pd.Series(values[is_str], dtype=object).str.strip().to_numpy(dtype=object)
        values[is_str] = stripped
        empty[is_str] = stripped == ""
    others = ~is_str
    if others.any():
        # JSON null and keys missing from a JSONL line (NaN in the frame) are empty.
        empty[others] = pd.isna(values[others])
    return values, empty


def _is_text(values: np.ndarray) -> np.ndarray:
    if pd.api.types.infer_dtype(values, skipna=False) == "string":
        return np.ones(len(values), bool)
    return np.fromiter((type(v) is str for v in values), bool, len(values))


def _as_text(values: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """JSON numbers become text (``123`` → ``"123"``); booleans, arrays and objects are refused."""
    text = _is_text(values)
    if text.all():
        return values, np.full(len(values), None, object)
    out = values.copy()
    reasons = np.full(len(values), None, object)
    for i in np.flatnonzero(~text):
        v = values[i]
        if isinstance(v, bool) or not isinstance(v, int | float):
            reasons[i] = f"invalid {what}: expected text"
        elif isinstance(v, float):
            if not math.isfinite(v):
                reasons[i] = f"invalid {what}: expected text"
            else:
                out[i] = str(int(v)) if v.is_integer() else repr(v)
        else:
            out[i] = str(v)
    return out, reasons


# -- value rules: each takes the non-empty cells, returns (values, reasons) -----

Rule = Callable[[np.ndarray, "_Context"], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class _Context:
    phone_region: str


def _reasons_where(mask: np.ndarray, reason: str) -> np.ndarray:
    """An object array holding ``reason`` where ``mask`` is true, else None."""
    out = np.full(len(mask), None, object)
    out[mask] = reason
    return out


def _map_distinct(
    values: np.ndarray, fn: Callable[[Any], tuple[Any, str | None]]
) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``fn`` once per distinct value; ``fn`` returns (value, reason)."""
    if not len(values):
        return values, np.full(0, None, object)
    codes, uniques = pd.factorize(pd.Series(values, dtype=object), use_na_sentinel=False)
    results = [fn(u) for u in uniques]
    out_u = np.empty(len(results), object)
    reason_u = np.empty(len(results), object)
    for i, (v, r) in enumerate(results):
        out_u[i] = v
        reason_u[i] = r
    return out_u[codes], reason_u[codes]


@lru_cache(maxsize=65536)
def _email_by_library(value: str) -> tuple[str | None, str | None]:
    try:
        result = validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        return None, f"invalid email: {exc}"
    normalized = result.normalized.lower()
    if len(normalized) > MAX_EMAIL:
        return None, f"invalid email: longer than {MAX_EMAIL} characters"
    return normalized, None


#: An address without any of these cannot be split into local part and domain.
_AT_SIGNS = ("@", "<", "\uff20", "\ufe6b")
_FAST_EMAIL_RE = re.compile(_FAST_EMAIL)
_FAST_INTL_EMAIL_RE = re.compile(_FAST_INTL_EMAIL)


def _email_from_text(value: str) -> tuple[str | None, str | None]:
    """One address: lowercased; the library only when the fast shapes do not settle it."""
    s = value.lower()
    if not any(c in s for c in _AT_SIGNS):
        # No @-sign of any kind: the library's own reason, found once.
        return None, _email_by_library("no at-sign")[1]
    fast = _FAST_EMAIL_RE.fullmatch(s) is not None or (
        _FAST_INTL_EMAIL_RE.fullmatch(s) is not None and unicodedata.normalize("NFC", s) == s
    )
    if not fast or s.endswith(_SPECIAL_SUFFIXES):
        return _email_by_library(s)
    if len(s) > MAX_EMAIL:
        return s, f"invalid email: longer than {MAX_EMAIL} characters"
    return s, None


def _rule_email(values: np.ndarray, ctx: _Context) -> tuple[np.ndarray, np.ndarray]:
    text, reasons = _as_text(values, "email")
    ok = np.flatnonzero(pd.isna(reasons))
    out = np.full(len(values), None, object)
    for i in ok:
        out[i], reasons[i] = _email_from_text(text[i])
    return out, reasons


_PARSE_ERRORS = {
    phonenumbers.NumberParseException.INVALID_COUNTRY_CODE: "no valid country code",
    phonenumbers.NumberParseException.NOT_A_NUMBER: "not a phone number",
    phonenumbers.NumberParseException.TOO_SHORT_AFTER_IDD: "too short",
    phonenumbers.NumberParseException.TOO_SHORT_NSN: "too short",
    phonenumbers.NumberParseException.TOO_LONG: "too long",
}
_POSSIBLE_ERRORS = {
    phonenumbers.ValidationResult.INVALID_COUNTRY_CODE: "no valid country code",
    phonenumbers.ValidationResult.TOO_SHORT: "too short for its country",
    phonenumbers.ValidationResult.TOO_LONG: "too long for its country",
    phonenumbers.ValidationResult.INVALID_LENGTH: "wrong length for its country",
    phonenumbers.ValidationResult.IS_POSSIBLE_LOCAL_ONLY: "a local number without area code",
}


@lru_cache(maxsize=65536)
def _phone_by_library(value: str, region: str) -> tuple[str | None, str | None]:
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException as exc:
        return None, f"invalid phone number: {_PARSE_ERRORS.get(exc.error_type, 'not parseable')}"
    verdict = phonenumbers.is_possible_number_with_reason(number)
    if verdict != phonenumbers.ValidationResult.IS_POSSIBLE:
        return None, f"invalid phone number: {_POSSIBLE_ERRORS.get(verdict, 'not possible')}"
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if not E164.match(e164):
        return None, "invalid phone number: E.164 form must be 6 to 14 characters"
    return e164, None


def _rule_phone(values: np.ndarray, ctx: _Context) -> tuple[np.ndarray, np.ndarray]:
    text, reasons = _as_text(values, "phone number")
    ok = pd.isna(reasons)
    s = pd.Series(text[ok], dtype=object)
    digits = s.str.replace(_SEPARATORS, "", regex=True)
    result = pd.Series(None, index=s.index, dtype=object)
    intl = s.str.fullmatch(f"{_NANP_INTL}|{_UK_MOBILE}").to_numpy(dtype=bool)
    result[intl] = digits[intl]
    if ctx.phone_region in _NANP_REGIONS:
        national = ~intl & s.str.fullmatch(_NANP_NATIONAL).to_numpy(dtype=bool)
        result[national] = "+1" + digits[national]
    else:
        national = np.zeros(len(s), bool)
    sub_out = result.to_numpy(dtype=object, copy=True)
    sub_reasons = np.full(len(s), None, object)
    rest = ~intl & ~national
    if rest.any():
        region = ctx.phone_region
        sub_out[rest], sub_reasons[rest] = _map_distinct(
            s.to_numpy(dtype=object)[rest], lambda v: _phone_by_library(v, region)
        )
    out = np.full(len(values), None, object)
    out[ok] = sub_out
    reasons[ok] = sub_reasons
    return out, reasons


@cache
def _rule_text(what: str, limit: int | None = None) -> Rule:
    def rule(values: np.ndarray, ctx: _Context) -> tuple[np.ndarray, np.ndarray]:
        text, reasons = _as_text(values, what)
        if limit is not None:
            ok = pd.isna(reasons)
            lengths = pd.Series(text[ok], dtype=object).str.len().to_numpy()
            idx = np.flatnonzero(ok)[lengths > limit]
            reasons[idx] = f"invalid {what}: longer than {limit} characters"
        return text, reasons

    _TEXT_RULES[rule] = (what, limit)
    return rule


def _rule_vocabulary(what: str, vocabulary: dict[str, Any], json_bools: bool = False) -> Rule:
    def rule(values: np.ndarray, ctx: _Context) -> tuple[np.ndarray, np.ndarray]:
        text = _is_text(values)
        out = np.full(len(values), None, object)
        reasons = np.full(len(values), None, object)
        # A dict look-up per value: few values (distinct ones, for text columns), and
        # pandas' map builds an index of the vocabulary at every call.
        get = vocabulary.get
        out[text] = [get(v.lower()) for v in values[text].tolist()]
        if not text.all():
            # JSON values: true/false as is, and 0/1 for booleans.
            for i in np.flatnonzero(~text):
                v = values[i]
                if json_bools and isinstance(v, bool):
                    out[i] = v
                elif json_bools and isinstance(v, int | float) and v in (0, 1):
                    out[i] = bool(v)
        bad = pd.isna(out)
        reasons[bad] = f"invalid {what}: not one of the known spellings"
        out[bad] = None
        return out, reasons

    return rule


_rule_gender = _rule_vocabulary("gender", GENDERS)
_rule_bool = _rule_vocabulary("boolean", BOOLEANS, json_bools=True)


@lru_cache(maxsize=65536)
def _date_by_parsing(value: str) -> tuple[str | None, str | None]:
    if not _DATETIME_TEXT.match(value):
        return None, "invalid date: not an ISO 8601 date or time"
    text = value[:10].replace("/", "-") + value[10:]
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text.replace(" ", "T", 1))
    except ValueError:
        return None, "invalid date: no such date or time"
    if len(value) == 10:
        return parsed.date().isoformat(), None
    if parsed.tzinfo is not None:
        return parsed.astimezone(UTC).replace(tzinfo=None).isoformat() + "Z", None
    return parsed.isoformat(), None


def _rule_date(values: np.ndarray, ctx: _Context) -> tuple[np.ndarray, np.ndarray]:
    text = _is_text(values)
    out = np.full(len(values), None, object)
    reasons = np.full(len(values), None, object)
    reasons[~text] = "invalid date: expected text in ISO 8601"
    s = pd.Series(values[text], dtype=object)
    plain = s.str.fullmatch(_DATE_TEXT).to_numpy(dtype=bool)
    sub_out = np.full(len(s), None, object)
    sub_reasons = np.full(len(s), None, object)
    if plain.any():
        parsed = pd.to_datetime(s[plain], format="%Y-%m-%d", errors="coerce")
        valid = parsed.notna().to_numpy()
        idx = np.flatnonzero(plain)
        sub_out[idx[valid]] = s.to_numpy(dtype=object)[idx[valid]]
        sub_reasons[idx[~valid]] = "invalid date: no such date"
    rest = ~plain
    if rest.any():
        sub_out[rest], sub_reasons[rest] = _map_distinct(
            s.to_numpy(dtype=object)[rest], _date_by_parsing
        )
    out[text] = sub_out
    reasons[text] = sub_reasons
    return out, reasons


def _rule_int(values: np.ndarray, ctx: _Context) -> tuple[np.ndarray, np.ndarray]:
    text = _is_text(values)
    out = np.full(len(values), None, object)
    reasons = np.full(len(values), None, object)
    s = pd.Series(values[text], dtype=object)
    ok = s.str.fullmatch(_INT_TEXT.pattern).to_numpy(dtype=bool) & (s.str.len() <= 16).to_numpy()
    sub_out = np.full(len(s), None, object)
    if ok.any():
        numbers = s[ok].astype("int64")
        in_range = (numbers.abs() <= MAX_SAFE_INT).to_numpy()
        idx = np.flatnonzero(ok)
        sub_out[idx[in_range]] = numbers[in_range].tolist()
        ok[idx[~in_range]] = False
    sub_reasons = _reasons_where(~ok, "invalid integer: not a whole number in plain digits")
    out[text] = sub_out
    reasons[text] = sub_reasons
    for i in np.flatnonzero(~text):
        v = values[i]
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) <= MAX_SAFE_INT:
            out[i] = v
        elif isinstance(v, float) and v.is_integer() and abs(v) <= MAX_SAFE_INT:
            out[i] = int(v)
        else:
            reasons[i] = "invalid integer: not a whole number"
    return out, reasons


def _rule_float(values: np.ndarray, ctx: _Context) -> tuple[np.ndarray, np.ndarray]:
    text = _is_text(values)
    out = np.full(len(values), None, object)
    reasons = np.full(len(values), None, object)
    s = pd.Series(values[text], dtype=object)
    ok = s.str.fullmatch(_FLOAT_TEXT.pattern).to_numpy(dtype=bool, copy=True)
    sub_out = np.full(len(s), None, object)
    if ok.any():
        numbers = s[ok].astype("float64")
        finite = np.isfinite(numbers.to_numpy())
        idx = np.flatnonzero(ok)
        sub_out[idx[finite]] = numbers[finite].tolist()
        ok[idx[~finite]] = False
    out[text] = sub_out
    reasons[text] = _reasons_where(~ok, "invalid number: not a decimal number")
    for i in np.flatnonzero(~text):
        v = values[i]
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            out[i] = float(v)
        else:
            reasons[i] = "invalid number: not a decimal number"
    return out, reasons


def _rule_keep(values: np.ndarray, ctx: _Context) -> tuple[np.ndarray, np.ndarray]:
    """Untyped values as they came: CSV text, or JSON values of any type."""
    out = values.copy()
    reasons = np.full(len(values), None, object)
    floats = np.fromiter((type(v) is float for v in values), bool, len(values))
    for i in np.flatnonzero(floats):
        if not math.isfinite(values[i]):
            reasons[i] = "invalid number: not finite"
    return out, reasons


def _rule_string(values: np.ndarray, ctx: _Context) -> tuple[np.ndarray, np.ndarray]:
    return _as_text(values, "text")


# -- the same rules in pyarrow, for columns of text ------------------------------
#
# Each takes the distinct trimmed, non-empty values of a text column and
# returns what the rule above returns for them. pyarrow's regular expressions
# are RE2, where \d, \w and case folding are ASCII-only, so only ASCII values
# are settled here; the rest go through the rule above, value by value.

#: A fast rule gives its values as pyarrow text when the rule keeps text (see :func:`_keeps_text`).
FastRule = Callable[[pa.StringArray, "_Context"], tuple[np.ndarray | pa.StringArray, np.ndarray]]

#: ``_rule_text`` rules by (what, limit), so their text columns skip the per-value checks.
_TEXT_RULES: dict[Rule, tuple[str, int | None]] = {}

# _FAST_EMAIL without its lookahead (RE2 has none): an address with ``xn--``
# anywhere goes to the rule instead (plain searches beat regular expressions).
_FAST_EMAIL_RE2 = _FAST_EMAIL.replace("(?!xn--)", "")
# Letters of Latin-1 Supplement and Latin Extended-A but U+0130: for these, Python's
# str.lower() and pyarrow's utf8_lower agree, the result stays in the set, every one
# is a \w to Python and each is its own NFC form. Addresses made of them and ASCII
# are settled by _FAST_INTL_EMAIL in pyarrow; anything else goes to the rule.
_LATIN = r"\x{00C0}-\x{00D6}\x{00D8}-\x{00F6}\x{00F8}-\x{012F}\x{0131}-\x{017F}"
_LATIN_TEXT_RE2 = rf"^[\x00-\x7f{_LATIN}]*$"
_FAST_INTL_EMAIL_RE2 = (
    _FAST_INTL_EMAIL.replace("(?=.{1,63}$)", "")
    .replace("(?!xn--)", "")
    .replace("\\w", "\\w" + _LATIN)
)


def _to_objects(arr: pa.Array) -> np.ndarray:
    return arr.to_numpy(zero_copy_only=False)


def _mask(arr: pa.Array) -> np.ndarray:
    return arr.to_numpy(zero_copy_only=False)


def _fullmatch(arr: pa.StringArray, pattern: str) -> pa.BooleanArray:
    return pc.match_substring_regex(arr, f"^(?:{pattern})$")


def _fill_rest(
    values: pa.StringArray,
    settled: np.ndarray,
    out: Any,
    reasons: np.ndarray,
    rule: Rule,
    ctx: _Context,
) -> tuple[Any, np.ndarray]:
    """The values not ``settled`` in pyarrow, through the per-value ``rule``.

    ``out`` is an object array, or pyarrow text for a rule that keeps text.
    """
    # A value without characters is an empty cell: no rule sees it.
    rest = ~settled & (_byte_lengths(values) > 0)
    if rest.any():
        found, reasons[rest] = rule(_to_objects(values.filter(rest)), ctx)
        if isinstance(out, pa.Array):
            out = pc.replace_with_mask(out, pa.array(rest), pa.array(found, pa.string()))
        else:
            out[rest] = found
    return out, reasons


def _fast_email(values: pa.StringArray, ctx: _Context) -> tuple[pa.StringArray, np.ndarray]:
    n = len(values)
    reasons = np.full(n, None, object)
    ascii_ = pc.string_is_ascii(values)
    lower = pc.ascii_lower(values)
    fast = _mask(pc.and_(ascii_, _fullmatch(lower, _FAST_EMAIL_RE2))) & ~_idna_or_special(lower)
    out = lower
    if fast.any():
        # ASCII: bytes are characters.
        long_ = (_byte_lengths(values) > MAX_EMAIL) & fast
        reasons[long_] = f"invalid email: longer than {MAX_EMAIL} characters"
    latin = ~_mask(ascii_)
    if latin.any():
        latin[latin] = _mask(pc.match_substring_regex(values.filter(latin), _LATIN_TEXT_RE2))
    if latin.any():
        # Like _email_from_text: lowercase, the international shape (at most 63
        # characters, so never too long), no IDNA label, no special-use domain.
        idx = np.flatnonzero(latin)
        low = pc.utf8_lower(values.filter(latin))
        ok = _mask(_fullmatch(low, _FAST_INTL_EMAIL_RE2)) & ~_idna_or_special(low)
        ok &= _mask(pc.utf8_length(low)) <= 63
        if ok.any():
            fast[idx[ok]] = True
            out = pc.replace_with_mask(out, pa.array(fast & latin), low.filter(ok))
    return _fill_rest(values, fast, out, reasons, _rule_email, ctx)


#: The last four bytes of each special-use suffix, as little-endian numbers.
_SPECIAL_TAILS = np.array(
    sorted({int.from_bytes(s[-4:].encode(), "little") for s in _SPECIAL_SUFFIXES}), np.uint32
)
assert all(len(s) > 4 for s in _SPECIAL_SUFFIXES)


def _idna_or_special(lower: pa.StringArray) -> np.ndarray:
    """Addresses the library must see: ``xn--`` anywhere, or a special-use domain.

    Read off the array's bytes with numpy. It may flag an address that has
    neither (one that merely ends in the same four bytes as a special-use
    name); those go to the library too, which gives the same answer.
    """
    offsets, data = _offsets_and_bytes(lower)
    found = np.zeros(len(lower), bool)
    start, end = int(offsets[0]), int(offsets[-1])
    if end == start:
        return found
    seg = data[start:end]
    # Dashes are rare in addresses: find them, then pairs of them with "xn" before.
    dashes = np.flatnonzero(seg == 0x2D)
    dashes = dashes[:-1][np.diff(dashes) == 1]
    dashes = dashes[dashes >= 2]
    if len(dashes):
        xn = dashes[(seg[dashes - 2] == 0x78) & (seg[dashes - 1] == 0x6E)]
        found[np.searchsorted(offsets, xn + start, side="right") - 1] = True
    ends = offsets[1:].astype(np.int64)
    long_enough = ends - offsets[:-1] > 4
    tails = np.zeros(len(lower), np.uint32)
    for k in range(1, 5):
        tails |= data[np.maximum(ends - k, 0)].astype(np.uint32) << (8 * (4 - k))
    found |= long_enough & np.isin(tails, _SPECIAL_TAILS)
    return found


def _fast_phone(values: pa.StringArray, ctx: _Context) -> tuple[pa.StringArray, np.ndarray]:
    reasons = np.full(len(values), None, object)
    shapes = f"{_NANP_INTL}|{_UK_MOBILE}"
    if ctx.phone_region in _NANP_REGIONS:
        shapes += f"|{_NANP_NATIONAL}"
    settled = _mask(pc.and_(pc.string_is_ascii(values), _fullmatch(values, shapes)))
    # The international shapes start with +, the national one never does.
    national = settled & ~_mask(pc.starts_with(values, "+"))
    out = _digits(values, plus_one=national)
    return _fill_rest(values, settled, out, reasons, _rule_phone, ctx)


def _digits(values: pa.StringArray, plus_one: np.ndarray | None = None) -> pa.StringArray:
    """``values`` without the characters of ``_SEPARATORS``, and ``+1`` before those marked.

    Done on all the bytes at once: the separators are ASCII, so removing
    their bytes (and adding ASCII ones) leaves valid UTF-8.
    """
    validity, offsets_buf, data_buf = values.buffers()
    if data_buf is None or values.offset:
        for separator in " .()-":
            values = pc.replace_substring(values, separator, "")
        if plus_one is not None and plus_one.any():
            prefixed = pc.binary_join_element_wise(_PLUS_ONE, values.filter(plus_one), _EMPTY)
            values = pc.replace_with_mask(values, pa.array(plus_one), prefixed)
        return values
    offsets = np.frombuffer(offsets_buf, np.int32)[: len(values) + 1]
    data = np.frombuffer(data_buf, np.uint8)[offsets[0] : offsets[-1]]
    found = (data == 0x20) | (data == 0x2E) | (data == 0x28) | (data == 0x29) | (data == 0x2D)
    separators = np.flatnonzero(found)
    starts = offsets - offsets[0]
    # Each value starts earlier by the separators before it.
    new_offsets = starts - np.searchsorted(separators, starts)
    data = np.delete(data, separators)
    if plus_one is not None and plus_one.any():
        marked = np.flatnonzero(plus_one)
        at = np.repeat(new_offsets[marked], 2)
        data = np.insert(data, at, np.tile(np.frombuffer(b"+1", np.uint8), len(marked)))
        # ... and later by the prefixes before it.
        new_offsets = new_offsets + 2 * np.concatenate(([0], np.cumsum(plus_one)))
    return pa.StringArray.from_buffers(
        len(values),
        pa.py_buffer(new_offsets.astype(np.int32)),
        pa.py_buffer(data),
        validity,
        values.null_count,
    )


def _fast_int(values: pa.StringArray, ctx: _Context) -> tuple[np.ndarray, np.ndarray]:
    n = len(values)
    out = np.full(n, None, object)
    reasons = np.full(n, None, object)
    ascii_ = _mask(pc.string_is_ascii(values))
    # ASCII: bytes are characters, and RE2's \d is the same as Python's.
    ok = ascii_ & (_byte_lengths(values) <= 16)
    ok &= _mask(_fullmatch(values, _INT_TEXT.pattern.strip("^$")))
    if ok.any():
        numbers = pc.cast(values.filter(ok), pa.int64()).to_numpy()
        in_range = np.abs(numbers) <= MAX_SAFE_INT
        idx = np.flatnonzero(ok)
        out[idx[in_range]] = numbers[in_range].tolist()
        ok[idx[~in_range]] = False
    reasons[ascii_ & ~ok] = "invalid integer: not a whole number in plain digits"
    return _fill_rest(values, ascii_, out, reasons, _rule_int, ctx)


def _fast_date(values: pa.StringArray, ctx: _Context) -> tuple[pa.StringArray, np.ndarray]:
    """Plain ``YYYY-MM-DD`` dates in ASCII: valid when parsing keeps their day of the month.

    Arrow's parser rolls a day past the month's end over into the next month
    (``2021-02-29`` reads as March 1st) and refuses a month or day out of range.
    """
    reasons = np.full(len(values), None, object)
    plain = _mask(pc.and_(pc.string_is_ascii(values), _fullmatch(values, _DATE_TEXT)))
    if plain.any():
        dates = values.filter(plain)
        parsed = pc.strptime(dates, format="%Y-%m-%d", unit="s", error_is_null=True)
        same = pc.equal(pc.day(parsed), pc.cast(pc.utf8_slice_codeunits(dates, 8, 10), pa.int64()))
        no_such = ~_mask(pc.coalesce(same, _FALSE))
        reasons[np.flatnonzero(plain)[no_such]] = "invalid date: no such date"
    return _fill_rest(values, plain, values, reasons, _rule_date, ctx)


def _fast_text(what: str, limit: int | None) -> FastRule:
    def rule(values: pa.StringArray, ctx: _Context) -> tuple[np.ndarray, np.ndarray]:
        reasons = np.full(len(values), None, object)
        if limit is not None:
            long_ = _mask(pc.utf8_length(values)) > limit
            reasons[long_] = f"invalid {what}: longer than {limit} characters"
        return values, reasons

    return rule


def _fast_rule(rule: Rule) -> FastRule:
    """The pyarrow form of ``rule``; any rule can run on the distinct values as objects."""
    if rule is _rule_email:
        return _fast_email
    if rule is _rule_phone:
        return _fast_phone
    if rule is _rule_int:
        return _fast_int
    if rule is _rule_date:
        return _fast_date
    if rule in _TEXT_RULES:
        return _fast_text(*_TEXT_RULES[rule])
    if rule is _rule_string or rule is _rule_keep:
        # Text is kept as it is by both.
        return _fast_text("text", None)
    return lambda values, ctx: rule(_to_objects(values), ctx)


_TYPE_RULES: dict[str, Rule] = {
    "int": _rule_int,
    "float": _rule_float,
    "bool": _rule_bool,
    "date": _rule_date,
    "string": _rule_string,
}
_STANDARD_RULES: dict[str, Rule] = {
    "email": _rule_email,
    "customer_id": _rule_text("customer_id"),
    "phone_number": _rule_phone,
    "firstname": _rule_text("firstname", MAX_NAME),
    "lastname": _rule_text("lastname", MAX_NAME),
    "gender": _rule_gender,
    "joined_at": _rule_date,
    "unsubscribed_at": _rule_date,
    "unsubscribed": _rule_bool,
}


# -- subscription groups ---------------------------------------------------------


def _group_entry(item: Any) -> dict[str, Any] | None:
    if not isinstance(item, dict):
        return None
    gid = item.get("id")
    if isinstance(gid, bool) or not isinstance(gid, str | int) or str(gid).strip() == "":
        return None
    subscribed = item.get("subscribed", True)
    if not isinstance(subscribed, bool):
        subscribed = BOOLEANS.get(str(subscribed).strip().lower())
        if subscribed is None:
            return None
    return {"id": gid.strip() if isinstance(gid, str) else gid, "subscribed": subscribed}


def _groups_from_value(value: Any) -> tuple[Any, str | None]:
    """A list of ``{"id", "subscribed"}`` from a JSON text, list or object."""
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            return None, "invalid subscription groups: not valid JSON"
    items = [value] if isinstance(value, dict) else value
    if not isinstance(items, list):
        return None, "invalid subscription groups: expected a list of objects"
    entries = [_group_entry(item) for item in items]
    if any(e is None for e in entries):
        return None, "invalid subscription groups: each needs an id and a true/false subscribed"
    return tuple(tuple(e.items()) for e in entries if e is not None), None


def _rule_groups(values: np.ndarray, ctx: _Context) -> tuple[np.ndarray, np.ndarray]:
    # Lists are not hashable, so JSONL arrays are parsed one by one; JSON text once per value.
    hashable = _is_text(values)
    out = np.full(len(values), None, object)
    reasons = np.full(len(values), None, object)
    if hashable.any():
        out[hashable], reasons[hashable] = _map_distinct(values[hashable], _groups_from_value)
    for i in np.flatnonzero(~hashable):
        out[i], reasons[i] = _groups_from_value(values[i])
    return out, reasons


# -- the chunk ---------------------------------------------------------------------


def check_phone_region(region: str) -> str:
    """The upper-case region code, or :class:`UsageError` if phonenumbers does not know it."""
    code = region.strip().upper()
    if code not in phonenumbers.SUPPORTED_REGIONS:
        raise UsageError(
            f"--phone-region must be a two-letter region code such as US or GB, got {region!r}"
        )
    return code


def infer_column_types(chunk: Chunk, mapping: ColumnMapping) -> dict[str, str]:
    """One type per custom-attribute column of a CSV file, from its first chunk.

    A column is ``int``, ``float``, ``bool`` or ``date`` when every non-empty
    value in ``chunk`` parses as that type without loss (so ``00123``, ``+5``
    or ``1.0`` in an integer-looking column keep it text), else ``string``.
    Standard fields and columns typed in ``mapping.types`` are left out.
    Call it once, on the first chunk, and pass the result to every
    :func:`clean_chunk` of the file, so one file never sends a column with
    mixed types.
    """
    types: dict[str, str] = {}
    ctx = _Context("US")
    names = set(chunk.column_names)
    for src, target in mapping.targets.items():
        if target in STANDARD_FIELDS or target in (GROUP_ID, GROUP_SUBSCRIBED):
            continue
        if target in mapping.types or src not in names:
            continue
        # Every test below holds for all values exactly when it holds for the distinct ones.
        present = _distinct_present(chunk, src)
        if not len(present) or not _is_text(present).all():
            types[target] = "string"
            continue
        s = pd.Series(present, dtype=object)
        if s.str.fullmatch(_INT_TEXT.pattern).all() and pd.isna(_rule_int(present, ctx)[1]).all():
            types[target] = "int"
        elif (
            s.str.fullmatch(_FLOAT_TEXT.pattern).all()
            # 15 significant digits survive a round trip through a double.
            and (
                s.str.replace(r"[-.]|[eE].*$", "", regex=True).str.lstrip("0").str.len() <= 15
            ).all()
        ):
            types[target] = "float"
        elif s.str.lower().isin(list(BOOLEANS)).all():
            types[target] = "bool"
        elif pd.isna(_rule_date(present, ctx)[1]).all():
            types[target] = "date"
        else:
            types[target] = "string"
    return types


def _distinct_present(chunk: Chunk, src: str) -> np.ndarray:
    """The distinct trimmed non-empty values of column ``src``, in no particular order."""
    values, empty = _prepare(chunk.frame[src])
    return pd.unique(values[~empty])


def clean_chunk(
    chunk: Chunk,
    mapping: ColumnMapping,
    options: ImportOptions | None = None,
    column_types: dict[str, str] | None = None,
) -> CleanResult:
    """Clean one chunk into payloads and rejects.

    ``mapping`` says which column feeds which field; its ``types`` declare
    custom-attribute types and win over ``column_types`` (from
    :func:`infer_column_types`). Custom attributes without a type keep their
    value as read (CSV text, JSON values). ``options`` supplies
    ``phone_region``, ``on_invalid`` and ``empty_as_null`` (defaults:
    ``US``, ``skip-row``, False). Source rejects in ``chunk`` are passed on.

    Raises :class:`InvalidRecord` at the chunk's first bad row when
    ``on_invalid`` is ``stop``, and :class:`UsageError` for an unknown phone
    region or column type.
    """
    options = options or ImportOptions()
    result = CleanResult(rejects=list(chunk.rejects))
    ctx = _Context(check_phone_region(options.phone_region))
    types = {**(column_types or {}), **mapping.types}
    for target, kind in types.items():
        if kind not in COLUMN_TYPES:
            raise UsageError(
                f"unknown type {kind!r} for {target!r}; use one of {', '.join(COLUMN_TYPES)}"
            )
    n = chunk.num_rows
    records = np.asarray(chunk.records)
    lines = np.asarray(chunk.lines)
    fields: dict[str, _Cleaned] = {}
    group_pair: dict[str, tuple[str, _Prepared]] = {}
    names = set(chunk.column_names)
    sources = [src for src in mapping.targets if src in names] if n else []
    prepared = _prepare_frame(chunk.frame, sources)
    for src, target in mapping.targets.items():
        if src not in prepared:
            continue
        column = prepared[src]
        if target in (GROUP_ID, GROUP_SUBSCRIBED):
            group_pair[target] = (src, column)
            continue
        if target in _STANDARD_RULES:
            rule = _STANDARD_RULES[target]
        elif target == "subscription_groups":
            rule = _rule_groups
        else:
            rule = _TYPE_RULES.get(types.get(target, ""), _rule_keep)
        fields[target] = _apply(rule, ctx, src, column)
    if group_pair:
        pair = _groups_from_pair(group_pair, n, ctx)
        fields["subscription_groups"] = _combine_groups(fields.get("subscription_groups"), pair)
    if "subscription_groups" in fields:
        # Groups are compared as tuples while cleaning; the payload carries objects.
        f = fields["subscription_groups"]
        if f.codes is not None and f.distinct is not None:
            f.distinct = _object_array([_group_objects(v) for v in f.distinct])
            f.rows = None
        else:
            has = np.flatnonzero(~f.empty & ~f.bad)
            f.values[has] = [_group_objects(v) for v in f.values[has]]
    if n:
        _finish(result, fields, records, lines, options, n)
    if options.on_invalid == "stop":
        _stop_at_first(result.rejects)
    return result


def _apply(rule: Rule, ctx: _Context, src: str, column: _Prepared) -> _Cleaned:
    """Run ``rule`` over the non-empty cells of ``column``; text columns once per distinct value."""
    if column.text is None:
        return _apply_objects(rule, ctx, src, column.raw, column.values, column.empty)
    if _by_row(rule, column.text):
        return _apply_rows(rule, ctx, src, column)
    n = len(column.empty)
    # Encoded as a whole (cheaper than filtering first): the empty cells become the
    # distinct value "" or null, which the rule never sees.
    encoded = pc.dictionary_encode(column.text)
    distinct = encoded.dictionary
    size = len(distinct)
    filled = ~_empty_cells(distinct)
    v = np.full(size + 1, _OMIT, object)
    r = np.full(size + 1, None, object)
    text = None
    if filled.any():
        out, r[:-1][filled] = _fast_rule(rule)(distinct.filter(filled), ctx)
        if isinstance(out, pa.Array):
            text = _spread(out, filled)
        else:
            v[:-1][filled] = out
    bad_u = pd.notna(r)
    v[bad_u] = _OMIT
    # One slot past the distinct values stands for the missing cells; "" maps to its own.
    indices = encoded.indices
    codes = (indices.fill_null(size) if indices.null_count else indices).to_numpy(
        zero_copy_only=False
    )
    bad = bad_u[codes]
    # Rejects quote the raw cell of bad rows only, so only those are made Python objects.
    raw = column.raw_where(bad)
    omitted = None
    ints = rule is _rule_int
    if _keeps_text(rule) or ints:
        omitted = bad_u
        omitted[-1] = True
        omitted[:-1] |= ~filled
    if text is None:
        return _Cleaned(
            None, r[codes], _same(src, n), raw, column.empty, bad, v, codes, omitted, None, ints
        )
    assert omitted is not None, "a rule that gives pyarrow text must keep text"
    # The slot for missing cells, and null where the value is omitted.
    text = pa.concat_arrays([text, pa.nulls(1, pa.string())])
    text = pc.if_else(pa.array(omitted), _NULL_TEXT, text)
    return _Cleaned(
        None, r[codes], _same(src, n), raw, column.empty, bad, None, codes, omitted, text
    )


# Scalars made once: pyarrow converts a plain Python value passed to a kernel at
# every call, which costs more than the kernel itself on a small array.
_NULL_TEXT = pa.scalar(None, pa.string())
_EMPTY = pa.scalar("", pa.string())
_PLUS_ONE = pa.scalar("+1", pa.string())
_FALSE = pa.scalar(False)
#: Rules whose pyarrow form settles nearly every value without Python.
_VECTOR_RULES: tuple[Rule, ...] = (_rule_email, _rule_phone, _rule_string, _rule_keep)
#: Cells of a column looked at to tell whether most of its values differ.
_SAMPLE = 1000


def _by_row(rule: Rule, text: pa.StringArray) -> bool:
    """Whether to run ``rule`` on every row rather than on each distinct value.

    Finding the distinct values costs a hash per cell and a gather after; it
    pays when values repeat (names, cities, dates), not for a column such as
    an email or an id, where nearly every value differs and the rule's
    pyarrow form is as cheap per row as per distinct value.
    """
    if not (rule in _VECTOR_RULES or rule in _TEXT_RULES) or len(text) < _SAMPLE:
        return False
    return bool(pc.count_distinct(text.slice(0, _SAMPLE)).as_py() > _SAMPLE // 2)


def _apply_rows(rule: Rule, ctx: _Context, src: str, column: _Prepared) -> _Cleaned:
    """:func:`_apply` row by row, for a text rule over a column of mostly different values."""
    assert column.text is not None
    n = len(column.empty)
    filled = ~column.empty
    # Empty cells (""; no nulls) go along: the fast rules leave a value without
    # characters alone, and it is left out below. Cheaper than taking them out and
    # putting them back.
    whole = not column.text.null_count
    reasons = np.full(n, None, object)
    out, found = _fast_rule(rule)(column.text if whole else column.text.filter(filled), ctx)
    assert isinstance(out, pa.Array), "a rule run by row gives pyarrow text"
    if whole:
        reasons = found
        reasons[column.empty] = None
    else:
        reasons[filled] = found
    bad = pd.notna(reasons)
    omitted = bad | column.empty
    text = out if whole else _spread(out, filled)
    if omitted.any():
        text = pc.if_else(pa.array(omitted), _NULL_TEXT, text)
    raw = column.raw_where(bad)
    return _Cleaned(None, reasons, _same(src, n), raw, column.empty, bad, None, None, omitted, text)


def _keeps_text(rule: Rule) -> bool:
    """Whether ``rule`` turns text into text (or a reason), never into another type."""
    return rule in _TEXT_RULES or rule in (
        _rule_email,
        _rule_phone,
        _rule_date,
        _rule_gender,
        _rule_string,
        _rule_keep,
    )


def _same(value: Any, n: int) -> np.ndarray:
    """A read-only object array of ``n`` times ``value``, without filling one."""
    return np.broadcast_to(np.array(value, dtype=object), n)


def _apply_objects(
    rule: Rule, ctx: _Context, src: str, raw: np.ndarray, values: np.ndarray, empty: np.ndarray
) -> _Cleaned:
    n = len(values)
    out = np.full(n, _OMIT, object)
    reasons = np.full(n, None, object)
    present = ~empty
    if present.any():
        v, r = rule(values[present], ctx)
        r = np.asarray(r, dtype=object)
        bad = pd.notna(r)
        v = np.asarray(v, dtype=object)
        v[bad] = _OMIT
        out[present] = v
        reasons[present] = r
    return _Cleaned(out, reasons, _same(src, n), raw, empty, pd.notna(reasons))


def _groups_from_pair(pair: dict[str, tuple[str, _Prepared]], n: int, ctx: _Context) -> _Cleaned:
    """One group per row from ``subscription_group_id`` + ``subscription_group_subscribed``."""
    none = np.full(n, None, object)
    absent = _Prepared(none, np.ones(n, bool), None, none)
    id_src, id_col = pair.get(GROUP_ID, (GROUP_ID, absent))
    sub_src, sub_col = pair.get(GROUP_SUBSCRIBED, (GROUP_SUBSCRIBED, absent))
    id_raw, no_id = id_col.raw, id_col.empty
    sub_raw, no_sub = sub_col.raw, sub_col.empty
    flags = _apply(_rule_bool, ctx, sub_src, sub_col)
    ids_text = _apply(_rule_text("subscription group id"), ctx, id_src, id_col)
    out = np.full(n, _OMIT, object)
    reasons = np.full(n, None, object)
    column = np.full(n, id_src, object)
    raw = id_raw.copy()
    both = ~no_id & ~no_sub & ~flags.bad & ~ids_text.bad
    idx = np.flatnonzero(both)
    out[idx] = [
        ((("id", i), ("subscribed", s)),)
        for i, s in zip(ids_text.values[idx], flags.values[idx], strict=True)
    ]
    bad_id = ids_text.bad
    reasons[bad_id] = "invalid subscription groups: the id must be text or a number"
    bad_flag = flags.bad | (~no_id & no_sub)
    reasons[bad_flag & ~bad_id] = (
        "invalid subscription groups: subscription_group_subscribed must be true or false"
    )
    column[bad_flag & ~bad_id] = sub_src
    raw[bad_flag & ~bad_id] = sub_raw[bad_flag & ~bad_id]
    lone_flag = no_id & ~no_sub & ~flags.bad
    reasons[lone_flag] = "invalid subscription groups: subscribed without a subscription_group_id"
    column[lone_flag] = sub_src
    raw[lone_flag] = sub_raw[lone_flag]
    return _Cleaned(out, reasons, column, raw, no_id & no_sub, pd.notna(reasons))


def _combine_groups(json_groups: _Cleaned | None, pair: _Cleaned) -> _Cleaned:
    if json_groups is None:
        return pair
    both = ~json_groups.empty & ~pair.empty & ~json_groups.bad & ~pair.bad
    values = json_groups.values.copy()
    for i in np.flatnonzero(both):
        values[i] = values[i] + pair.values[i]
    only_pair = json_groups.empty & ~pair.empty
    values[only_pair] = pair.values[only_pair]
    reasons = json_groups.reasons.copy()
    take_pair = pd.isna(reasons) & pair.bad
    reasons[take_pair] = pair.reasons[take_pair]
    column = np.where(take_pair | only_pair, pair.column, json_groups.column)
    raw = np.where(take_pair | only_pair, pair.raw, json_groups.raw)
    bad = pd.notna(reasons)
    values[bad] = _OMIT
    return _Cleaned(values, reasons, column, raw, json_groups.empty & pair.empty, bad)


def _finish(
    result: CleanResult,
    fields: dict[str, _Cleaned],
    records: np.ndarray,
    lines: np.ndarray,
    options: ImportOptions,
    n: int,
) -> None:
    """Decide each row's fate and build the payload dicts and rejects."""
    drop_field = options.on_invalid == "drop-field"
    order = [f for f in IDENTIFIERS if f in fields] + [f for f in fields if f not in IDENTIFIERS]
    bad = {f: fields[f].bad for f in order}
    any_bad = np.zeros(n, bool)
    for f in order:
        any_bad |= bad[f]
    has_id = np.zeros(n, bool)
    for ident in IDENTIFIERS:
        if ident in fields:
            has_id |= ~fields[ident].empty & ~bad[ident]
    rejected = ~has_id if drop_field else (~has_id | any_bad)

    def identifiers(positions: np.ndarray) -> list[Any]:
        """The identifier of each row at ``positions``: its email, else its customer_id."""
        found: list[Any] = [None] * len(positions)
        for ident in reversed(IDENTIFIERS):
            if ident not in fields:
                continue
            has = np.flatnonzero(~fields[ident].empty[positions] & ~bad[ident][positions])
            for k, value in zip(has.tolist(), fields[ident].values_at(positions[has]), strict=True):
                found[k] = value
        return found

    refused = np.flatnonzero(rejected)
    if len(refused):
        # The first bad field of each refused row, in ``order``, found for all at once.
        bad_cells = np.stack([bad[f][refused] for f in order] or [np.zeros(len(refused), bool)])
        culprits = np.where(bad_cells.any(axis=0), bad_cells.argmax(axis=0), -1).tolist()
        named = identifiers(refused)
        row_records, row_lines = records[refused].tolist(), lines[refused].tolist()
        for k, pos in enumerate(refused.tolist()):
            if culprits[k] < 0:
                result.rejects.append(
                    Reject(
                        row_records[k], row_lines[k], "missing identifier: no email or customer_id"
                    )
                )
                continue
            c = fields[order[culprits[k]]]
            result.rejects.append(
                Reject(
                    row_records[k],
                    row_lines[k],
                    str(c.reasons[pos]),
                    column=str(c.column[pos]),
                    value=c.raw[pos],
                    identifier=named[k],
                )
            )
    keep = ~rejected
    if drop_field:
        dropped: list[tuple[int, Reject]] = []
        for f in order:
            spots = np.flatnonzero(bad[f] & keep)
            for pos, name in zip(spots.tolist(), identifiers(spots), strict=True):
                c = fields[f]
                dropped.append(
                    (
                        int(pos),
                        Reject(
                            int(records[pos]),
                            int(lines[pos]),
                            str(c.reasons[pos]),
                            column=str(c.column[pos]),
                            value=c.raw[pos],
                            identifier=name,
                            dropped_field=True,
                        ),
                    )
                )
        dropped.sort(key=lambda pr: pr[0])
        result.rejects.extend(r for _, r in dropped)

    result.customers = _customers(fields, order, keep, records, lines, options.empty_as_null)


def _group_objects(value: Any) -> Any:
    """Groups cleaned as ``((key, value), ...)`` tuples, as the dicts a payload carries."""
    return value if value is _OMIT or value is None else [dict(e) for e in value]


def _object_array(items: list[Any]) -> np.ndarray:
    """A 1-d object array of ``items``, even when they are lists of equal length."""
    out = np.empty(len(items), object)
    for i, item in enumerate(items):
        out[i] = item
    return out


def _customers(
    fields: dict[str, _Cleaned],
    order: list[str],
    keep: np.ndarray,
    records: np.ndarray,
    lines: np.ndarray,
    empty_as_null: bool,
) -> CustomerBlock:
    """The customers of the kept rows, their payloads encoded as JSON a column at a time.

    Each field is encoded once per distinct value (``"key":value``: text in
    pyarrow, anything else by orjson, exactly as it would encode the value
    inside a payload dict); pyarrow then gathers the pieces per row and joins
    them, leaving out omitted fields. The result is byte for byte
    :func:`~importer.records.encode_payload` of the payload (keys sorted),
    without building a dict, a ``bytes`` or a ``Customer`` per row.
    """
    kept = np.flatnonzero(keep)
    if not order or not len(kept):
        return CustomerBlock(
            pa.array([], pa.binary()), pa.array([], pa.string()), kept, kept.copy()
        )
    n = len(keep)
    # Every row is encoded, and the kept ones taken once at the end: cheaper than
    # taking them from each field when, as usual, nearly all rows are kept.
    pieces = [_encoded_field(f, fields[f], n, empty_as_null) for f in sorted(order)]
    # Each piece ends in a comma (a join without separator is the cheaper one); a
    # kept row has at least its identifier, so the last comma is always there to close.
    joined = _concatenated([_OPEN, *pieces])
    rows = pc.binary_replace_slice(joined, start=-1, stop=_TO_END, replacement=b"}")
    keys = _merge_keys(fields, n)
    # The rejected rows stay in the arrays: the block's positions skip them without a copy.
    positions = None if len(kept) == n else kept
    return CustomerBlock(rows, keys, records[kept], lines[kept], positions)


def _concatenated(pieces: list[Any]) -> pa.BinaryArray:
    """Each row's pieces one after the other, a null piece counting as nothing.

    pyarrow's join takes longer per piece the more pieces it is given (a
    dozen at once cost half as much again as joining them four at a time and
    then the results), so they are joined in fours, and so on up. Nulls are
    replaced by nothing rather than skipped: pyarrow 26 leaves out of the
    result a row whose pieces are all null when told to skip them.
    """
    while len(pieces) > 1:
        pieces = [
            pc.binary_join_element_wise(*pieces[i : i + 4], _NOTHING, null_handling="replace")
            if i + 1 < len(pieces)
            else pieces[i]
            for i in range(0, len(pieces), 4)
        ]
    return pieces[0]


_OPEN = pa.scalar(b"{", pa.binary())
_TO_END = 2**31 - 1


def _encoded_field(name: str, c: _Cleaned, n: int, empty_as_null: bool) -> pa.BinaryArray:
    """``"name":value,`` per row as JSON, null where the field is left out."""
    prefix = orjson.dumps(name) + b":"
    nulls_for_empty = empty_as_null and name not in IDENTIFIERS
    text = None if nulls_for_empty else c.text()
    if text is not None:
        return _rows_of(_json_strings(prefix, text, b","), c.codes)
    if c.int_values and c.text_omitted is not None and not nulls_for_empty:
        # JSON writes an integer as its decimal digits, as Arrow's cast to text does.
        numbers = pa.array(c.distinct, pa.int64(), mask=c.text_omitted)
        digits = pc.cast(numbers, pa.string()).view(pa.binary())
        start = pa.scalar(prefix, pa.binary())
        return _rows_of(pc.binary_join_element_wise(start, digits, _COMMA, _NOTHING), c.codes)
    if nulls_for_empty:
        values, codes = c.values.copy(), None
        values[c.empty] = None
    elif c.codes is not None:
        values, codes = c.distinct_values(), c.codes
    else:
        values, codes = c.values, None
    omit = _OMIT
    dumps = orjson.dumps
    sort = orjson.OPT_SORT_KEYS
    pieces = pa.array(
        [None if v is omit else prefix + dumps(v, option=sort) + b"," for v in values.tolist()],
        pa.binary(),
    )
    return pieces if codes is None else pieces.take(codes)


def _rows_of(arr: pa.Array, codes: np.ndarray | None) -> pa.Array:
    """A field's ``arr`` per row: through ``codes`` when it holds one item per distinct value."""
    return arr if codes is None else arr.take(codes)


_NOTHING = pa.scalar(b"", pa.binary())
_COMMA = pa.scalar(b",", pa.binary())


def _json_strings(prefix: bytes, text: pa.StringArray, suffix: bytes = b"") -> pa.BinaryArray:
    """``prefix`` + each string as JSON + ``suffix`` (null stays null).

    The JSON is byte for byte what orjson writes.

    orjson writes a string as its UTF-8 between quotes, escaping only quotes,
    backslashes and control characters; the rare values holding one of those
    are encoded by orjson itself.
    """
    start = pa.scalar(prefix + b'"', pa.binary())
    end = pa.scalar(b'"' + suffix, pa.binary())
    out = pc.binary_join_element_wise(start, text.view(pa.binary()), end, _NOTHING)
    escaped = _json_escaped(text)
    if escaped.any():
        dumps = orjson.dumps
        special = [prefix + dumps(v) + suffix for v in text.filter(escaped).to_pylist()]
        out = pc.replace_with_mask(out, escaped, pa.array(special, pa.binary()))
    return out


#: Bytes JSON escapes inside a string: a quote, a backslash, control characters.
_ESCAPED_BYTES = np.zeros(256, bool)
_ESCAPED_BYTES[[*range(0x20), 0x22, 0x5C]] = True


def _json_escaped(text: pa.StringArray) -> np.ndarray:
    """Where a string holds a byte JSON escapes: a quote, a backslash or a control character.

    Looks at the array's bytes all at once (a regular expression per value
    costs ten times as much) and maps each hit to the row whose bytes hold it.
    """
    out = np.zeros(len(text), bool)
    offsets, data = _offsets_and_bytes(text)
    start = int(offsets[0])
    seg = data[start : int(offsets[-1])]
    # Plain comparisons first: they find that there is nothing to escape, as is usual,
    # several times faster than looking every byte up.
    if not ((seg < 0x20).any() or (seg == 0x22).any() or (seg == 0x5C).any()):
        return out
    hits = np.flatnonzero(_ESCAPED_BYTES[seg])
    if len(hits):
        out[np.searchsorted(offsets, hits + start, side="right") - 1] = True
        if text.null_count:
            out &= _mask(text.is_valid())
    return out


_NUL = pa.scalar("\0", pa.string())


def _merge_keys(fields: dict[str, _Cleaned], n: int) -> pa.StringArray:
    """Each row's merge key (:func:`~importer.records.customer_key`) from its identifiers.

    The email where there is one, else ``\\0`` + the customer_id; null without either.
    """
    email = _identifier_text(fields.get("email"))
    cid = _identifier_text(fields.get("customer_id"))
    if cid is None:
        return email if email is not None else pa.nulls(n, pa.string())
    if email is None:
        return pc.binary_join_element_wise(_NUL, cid, _EMPTY)
    missing = _mask(email.is_null())
    if not missing.any():
        return email
    by_id = pc.binary_join_element_wise(_NUL, cid.filter(missing), _EMPTY)
    return pc.replace_with_mask(email, pa.array(missing), by_id)


def _identifier_text(c: _Cleaned | None) -> pa.StringArray | None:
    """An identifier field per row as text, null where it is missing or invalid."""
    if c is None:
        return None
    text = c.text()
    if text is not None:
        return _rows_of(text, c.codes)
    has = ~c.empty & ~c.bad
    found = pa.array([str(v) for v in c.values[has].tolist()], pa.string())
    return _spread(found, has)


def _spread(values: pa.StringArray, where: np.ndarray) -> pa.StringArray:
    """An array as long as ``where``: ``values`` in order where it holds, null elsewhere."""
    if where.all():
        return values
    positions = np.full(len(where), -1, np.int64)
    positions[where] = np.arange(len(values))
    return values.take(pa.array(positions, mask=~where))


def _stop_at_first(rejects: list[Reject]) -> None:
    if not rejects:
        return
    first = min(rejects, key=lambda r: r.record)
    where = f" in column {first.column!r}" if first.column else ""
    raise InvalidRecord(
        f"stopped at record {first.record} (line {first.line}){where}: {first.reason} "
        "(--on-invalid stop)"
    )
