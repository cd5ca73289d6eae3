"""Cleaning stage: turn a mapped chunk into payloads or rejects, vectorised.

Owns: normalising values (trim, case, formats), the API's field rules, the
types of custom attributes, and the reasons rows are refused. Every row of a
chunk leaves either as a :class:`~importer.records.Customer` payload or as a
:class:`~importer.records.Reject` (``--on-invalid drop-field`` adds a reject
marked ``dropped_field`` to a customer that is still sent). Works column by
column with pandas; per-row Python only where a payload dict is finally built
and where a distinct value has to go to a validation library (each distinct
value once).

Must not: read files, send anything, merge repeated customers (that is
:mod:`importer.dedupe`), or keep state between chunks other than the column
types the caller passes in and bounded caches of pure functions.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import re
import unicodedata
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache, lru_cache
from itertools import repeat
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
from .records import Customer, Reject
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

    customers: list[Customer] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)


@dataclass
class _Cleaned:
    """One target field of a chunk after cleaning, aligned with the chunk's rows.

    ``values`` holds the payload value or :data:`_OMIT`; ``reasons`` a reason
    where the cell was invalid, else None; ``column`` and ``raw`` say which
    input cell a reject should quote.
    """

    values: np.ndarray
    reasons: np.ndarray
    column: np.ndarray
    raw: np.ndarray
    empty: np.ndarray
    #: Where ``reasons`` holds a reason.
    bad: np.ndarray


# -- column preparation --------------------------------------------------------

#: Every character Python's ``str.strip()`` removes (those ``str.isspace()`` accepts), so
#: pyarrow trims exactly the same. Written out: finding them by testing every code point
#: took a tenth of a second at each start (a test checks the list against ``isspace``).
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
    """

    raw: np.ndarray
    empty: np.ndarray
    text: pa.StringArray | None = None
    _values: np.ndarray | None = None

    @property
    def values(self) -> np.ndarray:
        if self._values is None:
            assert self.text is not None
            self._values = self.text.to_numpy(zero_copy_only=False)
        return self._values


def _prepare_column(series: pd.Series) -> _Prepared:
    """Trim text cells and find the empty ones, in pyarrow when the column is text."""
    raw = series.to_numpy(dtype=object)
    arr = None
    if pd.api.types.infer_dtype(raw, skipna=True) in ("string", "empty"):
        arr = _as_arrow_text(raw, checked=True)
    if arr is not None:
        text = pc.utf8_trim(arr, characters=_WHITESPACE)
        empty = pc.fill_null(pc.equal(pc.binary_length(text), 0), True)
        return _Prepared(raw, empty.to_numpy(zero_copy_only=False), text)
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
    empty = pc.fill_null(pc.equal(pc.binary_length(trimmed), 0), True)
    empty_cells = empty.to_numpy(zero_copy_only=False).reshape(cells.shape)
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


_FAST_EMAIL_RE = re.compile(_FAST_EMAIL)
_FAST_INTL_EMAIL_RE = re.compile(_FAST_INTL_EMAIL)


def _email_from_text(value: str) -> tuple[str | None, str | None]:
    """One address: lowercased; the library only when the fast shapes do not settle it."""
    s = value.lower()
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
        mapped = pd.Series(values[text], dtype=object).str.lower().map(vocabulary)
        out[text] = mapped.to_numpy(dtype=object)
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

FastRule = Callable[[pa.StringArray, "_Context"], tuple[np.ndarray, np.ndarray]]

#: ``_rule_text`` rules by (what, limit), so their text columns skip the per-value checks.
_TEXT_RULES: dict[Rule, tuple[str, int | None]] = {}

# _FAST_EMAIL without its lookahead (RE2 has none): a domain label starting
# with ``xn--`` is looked for separately.
_FAST_EMAIL_RE2 = _FAST_EMAIL.replace("(?!xn--)", "")
_XN_LABEL_RE2 = r"@(?:[a-z0-9-]+\.)*xn--"
_SPECIAL_RE2 = "(?:" + "|".join(re.escape(s) for s in _SPECIAL_SUFFIXES) + ")$"


def _to_objects(arr: pa.Array) -> np.ndarray:
    return arr.to_numpy(zero_copy_only=False)


def _mask(arr: pa.Array) -> np.ndarray:
    return arr.to_numpy(zero_copy_only=False)


def _fullmatch(arr: pa.StringArray, pattern: str) -> pa.BooleanArray:
    return pc.match_substring_regex(arr, f"^(?:{pattern})$")


def _fill_rest(
    values: pa.StringArray,
    settled: np.ndarray,
    out: np.ndarray,
    reasons: np.ndarray,
    rule: Rule,
    ctx: _Context,
) -> tuple[np.ndarray, np.ndarray]:
    rest = ~settled
    if rest.any():
        out[rest], reasons[rest] = rule(_to_objects(values.filter(rest)), ctx)
    return out, reasons


def _fast_email(values: pa.StringArray, ctx: _Context) -> tuple[np.ndarray, np.ndarray]:
    n = len(values)
    out = np.full(n, None, object)
    reasons = np.full(n, None, object)
    lower = pc.ascii_lower(values)
    fast = pc.and_(pc.string_is_ascii(values), _fullmatch(lower, _FAST_EMAIL_RE2))
    fast = pc.and_not(fast, pc.match_substring_regex(lower, _XN_LABEL_RE2))
    fast = _mask(pc.and_not(fast, pc.match_substring_regex(lower, _SPECIAL_RE2)))
    if fast.any():
        out[fast] = _to_objects(lower.filter(fast))
        # ASCII: bytes are characters.
        long_ = _mask(pc.greater(pc.binary_length(values), MAX_EMAIL)) & fast
        reasons[long_] = f"invalid email: longer than {MAX_EMAIL} characters"
    return _fill_rest(values, fast, out, reasons, _rule_email, ctx)


def _fast_phone(values: pa.StringArray, ctx: _Context) -> tuple[np.ndarray, np.ndarray]:
    n = len(values)
    out = np.full(n, None, object)
    reasons = np.full(n, None, object)
    ascii_ = pc.string_is_ascii(values)
    intl = _mask(pc.and_(ascii_, _fullmatch(values, f"{_NANP_INTL}|{_UK_MOBILE}")))
    if ctx.phone_region in _NANP_REGIONS:
        national = _mask(pc.and_(ascii_, _fullmatch(values, _NANP_NATIONAL))) & ~intl
    else:
        national = np.zeros(n, bool)
    if intl.any():
        out[intl] = _to_objects(_digits(values.filter(intl)))
    if national.any():
        out[national] = _to_objects(
            pc.binary_join_element_wise("+1", _digits(values.filter(national)), "")
        )
    return _fill_rest(values, intl | national, out, reasons, _rule_phone, ctx)


def _digits(values: pa.StringArray) -> pa.StringArray:
    """``values`` without the characters of ``_SEPARATORS`` (plain replaces beat a regex)."""
    for separator in " .()-":
        values = pc.replace_substring(values, separator, "")
    return values


def _fast_text(what: str, limit: int | None) -> FastRule:
    def rule(values: pa.StringArray, ctx: _Context) -> tuple[np.ndarray, np.ndarray]:
        reasons = np.full(len(values), None, object)
        if limit is not None:
            long_ = _mask(pc.greater(pc.utf8_length(values), limit))
            reasons[long_] = f"invalid {what}: longer than {limit} characters"
        return _to_objects(values), reasons

    return rule


def _fast_rule(rule: Rule) -> FastRule:
    """The pyarrow form of ``rule``; any rule can run on the distinct values as objects."""
    if rule is _rule_email:
        return _fast_email
    if rule is _rule_phone:
        return _fast_phone
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
    for src, target in mapping.targets.items():
        if target in STANDARD_FIELDS or target in (GROUP_ID, GROUP_SUBSCRIBED):
            continue
        if target in mapping.types or src not in chunk.frame.columns:
            continue
        values, empty = _prepare(chunk.frame[src])
        # Every test below holds for all values exactly when it holds for the distinct ones.
        present = pd.unique(values[~empty])
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
    frame = chunk.frame
    ctx = _Context(check_phone_region(options.phone_region))
    types = {**(column_types or {}), **mapping.types}
    for target, kind in types.items():
        if kind not in COLUMN_TYPES:
            raise UsageError(
                f"unknown type {kind!r} for {target!r}; use one of {', '.join(COLUMN_TYPES)}"
            )
    n = len(frame)
    records = np.asarray(chunk.records)
    lines = np.asarray(chunk.lines)
    fields: dict[str, _Cleaned] = {}
    group_pair: dict[str, tuple[str, _Prepared]] = {}
    sources = [src for src in mapping.targets if src in frame.columns] if n else []
    prepared = _prepare_frame(frame, sources)
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
        f = fields["subscription_groups"]
        has = np.flatnonzero(~f.empty & ~f.bad)
        f.values[has] = [[dict(e) for e in v] for v in f.values[has]]
    if n:
        _finish(result, fields, records, lines, options, n)
    if options.on_invalid == "stop":
        _stop_at_first(result.rejects)
    return result


def _apply(rule: Rule, ctx: _Context, src: str, column: _Prepared) -> _Cleaned:
    """Run ``rule`` over the non-empty cells of ``column``; text columns once per distinct value."""
    if column.text is None:
        return _apply_objects(rule, ctx, src, column.raw, column.values, column.empty)
    n = len(column.raw)
    present = ~column.empty
    encoded = pc.dictionary_encode(column.text.filter(pa.array(present)))
    if len(encoded.dictionary):
        v, r = _fast_rule(rule)(encoded.dictionary, ctx)
    else:
        v = r = np.empty(0, object)
    # One slot past the distinct values stands for the empty cells.
    r = _with_last(r, None)
    bad_u = pd.notna(r)
    v = _with_last(v, _OMIT)
    v[bad_u] = _OMIT
    codes = np.full(n, len(encoded.dictionary), np.intp)
    codes[present] = encoded.indices.to_numpy()
    return _Cleaned(v[codes], r[codes], _same(src, n), column.raw, column.empty, bad_u[codes])


def _with_last(values: np.ndarray, last: Any) -> np.ndarray:
    out = np.empty(len(values) + 1, object)
    out[:-1] = values
    out[-1] = last
    return out


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
    identifier = np.full(n, None, object)
    for ident in reversed(IDENTIFIERS):
        if ident in fields:
            good = ~fields[ident].empty & ~bad[ident]
            identifier[good] = fields[ident].values[good]

    for pos in np.flatnonzero(rejected):
        culprit = next((f for f in order if bad[f][pos]), None)
        if culprit is None:
            result.rejects.append(
                Reject(
                    int(records[pos]),
                    int(lines[pos]),
                    "missing identifier: no email or customer_id",
                )
            )
        else:
            c = fields[culprit]
            result.rejects.append(
                Reject(
                    int(records[pos]),
                    int(lines[pos]),
                    str(c.reasons[pos]),
                    column=str(c.column[pos]),
                    value=c.raw[pos],
                    identifier=identifier[pos],
                )
            )
    keep = ~rejected
    if drop_field:
        dropped: list[tuple[int, Reject]] = []
        for f in order:
            for pos in np.flatnonzero(bad[f] & keep):
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
                            identifier=identifier[pos],
                            dropped_field=True,
                        ),
                    )
                )
        dropped.sort(key=lambda pr: pr[0])
        result.rejects.extend(r for _, r in dropped)

    result.customers = _customers(fields, order, keep, records, lines, options.empty_as_null)


#: Rows are grouped by which fields they carry while there are fewer groups than this share.
_MAX_GROUP_SHARE = 0.05


def _customers(
    fields: dict[str, _Cleaned],
    order: list[str],
    keep: np.ndarray,
    records: np.ndarray,
    lines: np.ndarray,
    empty_as_null: bool,
) -> list[Customer]:
    """The payloads of the kept rows, keys in ``order``, omitted values left out.

    Rows that carry the same set of fields are built together, a column at a
    time, so no per-cell test is needed; the payloads come out in row order.
    """
    kept = np.flatnonzero(keep)
    if not order or not len(kept):
        return []
    columns = []
    carried = []
    for f in order:
        c = fields[f]
        values = c.values
        if empty_as_null and f not in IDENTIFIERS:
            values = values.copy()
            values[c.empty] = None
            has = ~c.bad
        else:
            # A value is omitted exactly where its cell is empty or bad.
            has = ~c.bad & ~c.empty
        columns.append(values[kept])
        carried.append(has[kept])
    kept_records = records[kept].tolist()
    kept_lines = lines[keep].tolist()
    if len(order) < 63:
        pattern = np.zeros(len(kept), np.int64)
        for bit, has in enumerate(carried):
            pattern |= has.astype(np.int64) << bit
        patterns, inverse = np.unique(pattern, return_inverse=True)
    if len(order) >= 63 or len(patterns) > max(1, _MAX_GROUP_SHARE * len(kept)):
        omit = _OMIT
        return [
            Customer({k: v for k, v in zip(order, row, strict=True) if v is not omit}, rec, line)
            for row, rec, line in zip(
                zip(*columns, strict=True), kept_records, kept_lines, strict=True
            )
        ]
    with _collector_paused():
        return _build_customers(columns, order, patterns, inverse, kept_records, kept_lines)


def _build_customers(
    columns: list[np.ndarray],
    order: list[str],
    patterns: np.ndarray,
    inverse: np.ndarray,
    kept_records: list[int],
    kept_lines: list[int],
) -> list[Customer]:
    payloads = np.empty(len(kept_records), object)
    by_pattern = np.argsort(inverse, kind="stable")
    starts = np.searchsorted(inverse[by_pattern], np.arange(len(patterns) + 1))
    for g, bits in enumerate(patterns.tolist()):
        rows = by_pattern[starts[g] : starts[g + 1]]
        carried_here = [j for j in range(len(order)) if bits >> j & 1]
        build = _payload_builder(tuple(order[j] for j in carried_here))
        group = np.empty(len(rows), object)
        group[:] = build(*(columns[j][rows] for j in carried_here))
        payloads[rows] = group
    return _new_customers(payloads.tolist(), kept_records, kept_lines)


_CUSTOMER_FIELDS = ("payload", "record", "line", "merged_records")
#: Customer is a frozen, slotted dataclass whose generated ``__init__`` only sets
#: its four slots (``merged_records`` to ``()``); checked here so a change there
#: falls back to calling it.
_SET_CUSTOMER_SLOTS = (
    getattr(Customer, "__slots__", None) == _CUSTOMER_FIELDS
    and tuple(f.name for f in dataclasses.fields(Customer)) == _CUSTOMER_FIELDS
    and Customer.__dataclass_fields__["merged_records"].default == ()
    and not hasattr(Customer, "__post_init__")
)


def _new_customers(payloads: list[Any], records: list[int], lines: list[int]) -> list[Customer]:
    """``[Customer(p, r, l) for ...]``, faster: the slots are set a column at a time.

    Setting each slot through its descriptor in C loops gives the same objects as
    the dataclass ``__init__`` (which sets them one by one with
    ``object.__setattr__``) in about half the time.
    """
    if not _SET_CUSTOMER_SLOTS:
        return list(map(Customer, payloads, records, lines))
    customers = list(map(object.__new__, repeat(Customer, len(payloads))))
    slots = Customer.__dict__
    for name, values in (
        ("payload", payloads),
        ("record", records),
        ("line", lines),
        ("merged_records", repeat((), len(payloads))),
    ):
        deque(map(slots[name].__set__, customers, values), maxlen=0)
    return customers


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Hold off Python's cyclic garbage collector while payloads are built.

    Tens of thousands of new dicts and customers would otherwise set off
    collections that scan them again and again while they are being made,
    a fifth of the cleaning time. They hold no reference cycles, so nothing is
    left for the collector; it runs as usual after. Left disabled if it was.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@lru_cache(maxsize=1024)
def _payload_builder(keys: tuple[str, ...]) -> Callable[..., list[dict[str, Any]]]:
    """A function turning one list per key into one dict per row, keys in this order.

    A dict display with constant keys is built presized, about twice as fast as
    ``dict(zip(keys, row))``, so the comprehension is generated for each set of
    keys (like :mod:`dataclasses` generates ``__init__``). Keys enter the code
    only as ``repr`` string literals.
    """
    if not keys:
        return lambda *columns: []
    args = ", ".join(f"c{i}" for i in range(len(keys)))
    names = ", ".join(f"v{i}" for i in range(len(keys)))
    items = ", ".join(f"{key!r}: v{i}" for i, key in enumerate(keys))
    builder: Callable[..., list[dict[str, Any]]] = eval(
        f"lambda {args}: [{{{items}}} for {names}, in zip({args}, strict=True)]"
    )
    return builder


def _stop_at_first(rejects: list[Reject]) -> None:
    if not rejects:
        return
    first = min(rejects, key=lambda r: r.record)
    where = f" in column {first.column!r}" if first.column else ""
    raise InvalidRecord(
        f"stopped at record {first.record} (line {first.line}){where}: {first.reason} "
        "(--on-invalid stop)"
    )
