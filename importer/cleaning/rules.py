"""The cleaning rules, one value at a time, and which rule cleans which field or type.

Each rule takes one trimmed, non-empty cell (a str for CSV; for JSONL any
JSON value but null) and returns ``(clean value, None)`` or ``(None,
reason)``; the reason reads ``invalid <what>: <why>``. Rules are pure, so
the caller may apply each once per distinct value, and the few that call a
validation library keep a bounded cache of its answers.

Must not: look at other cells or rows, or decide a row's fate (that is
:mod:`importer.cleaning.chunk`).
"""

from __future__ import annotations

import contextlib
import math
import re
import unicodedata
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from functools import lru_cache, partial
from typing import Any

import dateutil.parser
import orjson
import phonenumbers
import pycountry
from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email

from ..errors import UsageError
from ..fields import GROUP_ID, GROUP_SUBSCRIBED

#: A rule's answer: the clean value and None, or None and the reason it is invalid.
Cleaned = tuple[Any, str | None]
Rule = Callable[[Any], Cleaned]

MAX_EMAIL = 64
MAX_NAME = 64
#: The API's phone rule: ``+``, no ``0`` after it, 6 to 14 characters.
E164 = re.compile(r"\+[1-9][0-9]{4,12}")
#: Integers beyond this lose precision in JSON consumers that read numbers as doubles.
MAX_SAFE_INT = 2**53

GENDERS = {
    **dict.fromkeys(("m", "male", "man", "boy", "masculine", "mr", "h"), "male"),
    **dict.fromkeys(("f", "female", "woman", "girl", "feminine", "w", "mrs", "ms"), "female"),
    **dict.fromkeys(("u", "unknown", "unspecified", "not specified", "x", "other"), "unknown"),
    **dict.fromkeys(("prefer not to say", "diverse", "non-binary", "nonbinary"), "unknown"),
}
BOOLEANS = {
    **dict.fromkeys(("true", "t", "yes", "y", "1"), True),
    **dict.fromkeys(("false", "f", "no", "n", "0"), False),
}

INT_TEXT = re.compile(r"-?(?:0|[1-9][0-9]*)")
FLOAT_TEXT = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


def as_text(value: Any, what: str) -> Cleaned:
    """Text as it is; a JSON number as its digits (``123`` → ``"123"``); anything else refused."""
    if isinstance(value, str):
        return value, None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None, f"invalid {what}: expected text"
    if isinstance(value, float):
        if not math.isfinite(value):
            return None, f"invalid {what}: expected text"
        return (str(int(value)) if value.is_integer() else repr(value)), None
    return str(value), None


def _short_text(value: Any, what: str, limit: int) -> Cleaned:
    """Text (see :func:`as_text`) of at most ``limit`` characters."""
    text, reason = as_text(value, what)
    if reason is None and len(text) > limit:
        return None, f"invalid {what}: longer than {limit} characters"
    return text, reason


def _spelling(value: Any, what: str, vocabulary: dict[str, Any]) -> Cleaned:
    """The value ``vocabulary`` gives text, compared in lower case."""
    found = vocabulary.get(value.lower()) if isinstance(value, str) else None
    if found is None:
        return None, f"invalid {what}: not one of the known spellings"
    return found, None


# -- identifiers -----------------------------------------------------------------


def unguarded(text: str) -> str:
    """``text`` without the guard a spreadsheet export puts around a number-like cell.

    ``="00123"`` (Excel's formula form) gives ``00123``; a leading apostrophe
    (``'00123``, Shopify's ids) too. Nothing else about the text changes.
    """
    if len(text) >= 3 and text.startswith('="') and text.endswith('"'):
        return text[2:-1]
    return text[1:] if text.startswith("'") else text


def clean_customer_id(value: Any) -> Cleaned:
    """The id as text (a JSON number as its digits), without a spreadsheet guard."""
    text, reason = as_text(value, "customer_id")
    if reason is not None:
        return None, reason
    text = unguarded(text)
    return (text, None) if text else (None, "invalid customer_id: empty inside its quotes")


# -- email ---------------------------------------------------------------------

# Addresses of these shapes are ones email-validator accepts unchanged once
# lowercased, so they skip it; anything else (quoted parts, IDNA, odd domains)
# goes to the library. Internationalised local parts made of letters and
# numbers are accepted unchanged when already in NFC, and at most 63 characters
# keep the address within the library's 254-byte limit.
_ATOM = r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"(?!xn--)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_PLAIN_EMAIL = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@(?:{_LABEL}\.)+[a-z]{{2,63}}")
_INTL_ATOM = r"[\w!#$%&'*+/=?^`{|}~-]+"
_INTL_EMAIL = re.compile(
    rf"(?=.{{1,63}}$){_INTL_ATOM}(?:\.{_INTL_ATOM})*@(?:{_LABEL}\.)+[a-z]{{2,63}}"
)
_SPECIAL_SUFFIXES = tuple(f".{name}" for name in SPECIAL_USE_DOMAIN_NAMES)
#: An address without any of these cannot be split into local part and domain.
_AT_SIGNS = re.compile("[@<\uff20\ufe6b]")


@lru_cache(maxsize=65536)
def _email_by_library(value: str) -> Cleaned:
    try:
        result = validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        return None, f"invalid email: {exc}"
    normalized = result.normalized.lower()
    if len(normalized) > MAX_EMAIL:
        return None, f"invalid email: longer than {MAX_EMAIL} characters"
    return normalized, None


def clean_email(value: Any) -> Cleaned:
    """The address lowercased and checked by email-validator (no DNS), at most 64 characters."""
    text, reason = as_text(value, "email")
    if reason is not None:
        return None, reason
    # A leading apostrophe is part of some addresses: only the ="..." guard goes.
    s = (text if text.startswith("'") else unguarded(text)).lower()
    if not _AT_SIGNS.search(s):
        # The library's own reason, found once for all addresses without an @-sign.
        return None, _email_by_library("no at-sign")[1]
    plain = _PLAIN_EMAIL.fullmatch(s) is not None or (
        _INTL_EMAIL.fullmatch(s) is not None and unicodedata.normalize("NFC", s) == s
    )
    if not plain or s.endswith(_SPECIAL_SUFFIXES):
        return _email_by_library(s)
    if len(s) > MAX_EMAIL:
        return None, f"invalid email: longer than {MAX_EMAIL} characters"
    return s, None


# -- phone ---------------------------------------------------------------------

# The common US and UK mobile shapes, whose E.164 form is their digits (with +1
# before a US national number): phonenumbers gives the same for each.
_NANP_INTL = r"\+1[ .-]?(?:\([2-9][0-9]{2}\)|[2-9][0-9]{2})[ .-]?[2-9][0-9]{2}[ .-]?[0-9]{4}"
_UK_MOBILE = r"\+44 ?7[0-9]{3} ?[0-9]{6}"
_INTL_SHAPE = re.compile(f"{_NANP_INTL}|{_UK_MOBILE}")
_NANP_NATIONAL = re.compile(
    r"(?:\([2-9][0-9]{2}\) ?|[2-9][0-9]{2}[ .-]?)[2-9][0-9]{2}[ .-]?[0-9]{4}"
)
_NO_SEPARATORS = str.maketrans("", "", " .()-")
_NANP_REGIONS = frozenset(phonenumbers.COUNTRY_CODE_TO_REGION_CODE[1])

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


#: Where phonenumbers read a number's country code: from the number, or from the region.
_FROM_REGION = phonenumbers.CountryCodeSource.FROM_DEFAULT_COUNTRY
#: phonenumbers' code for "no region": a row whose country is not known.
UNKNOWN_REGION = "ZZ"


@lru_cache(maxsize=65536)
def _phone_by_library(value: str, region: str) -> Cleaned:
    try:
        number = phonenumbers.parse(value, region, keep_raw_input=True)
    except phonenumbers.NumberParseException as exc:
        if region == UNKNOWN_REGION and exc.error_type == exc.INVALID_COUNTRY_CODE:
            return None, "invalid phone number: no country code, and the row's country is unknown"
        return None, f"invalid phone number: {_PARSE_ERRORS.get(exc.error_type, 'not parseable')}"
    verdict = phonenumbers.is_possible_number_with_reason(number)
    if verdict != phonenumbers.ValidationResult.IS_POSSIBLE:
        why = _POSSIBLE_ERRORS.get(verdict, "not possible")
        if number.country_code_source == _FROM_REGION:
            # Never sent as another country's number: say which country it was read in.
            why += f" (read as a number of {region})"
        return None, f"invalid phone number: {why}"
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if not E164.fullmatch(e164):
        return None, "invalid phone number: E.164 form must be 6 to 14 characters"
    return e164, None


def clean_phone(value: Any, region: str = "US") -> Cleaned:
    """The number in E.164, without its extension.

    A number without ``+`` (or the international prefix ``00``, or
    ``region``'s own) is read as a national number of ``region``; one that
    is not possible there is invalid, with a reason naming the region.
    """
    text, reason = as_text(value, "phone number")
    if reason is not None:
        return None, reason
    text = unguarded(text)
    if text.startswith("00"):
        text = "+" + text[2:]  # 00 is the international prefix nearly everywhere but NANP
    if _INTL_SHAPE.fullmatch(text):
        return text.translate(_NO_SEPARATORS), None
    if region in _NANP_REGIONS and _NANP_NATIONAL.fullmatch(text):
        return "+1" + text.translate(_NO_SEPARATORS), None
    return _phone_by_library(text, region)


def phone_region(region: str) -> str:
    """``phone_region`` in upper case; raises :class:`UsageError` if phonenumbers lacks it."""
    code = region.strip().upper()
    if code not in phonenumbers.SUPPORTED_REGIONS:
        raise UsageError(
            f"phone_region must be a two-letter region code such as US or GB, got {region!r}",
            "phone_region",
        )
    return code


#: Country names in exports that pycountry does not know, folded as in :func:`country_code`.
_COUNTRY_ALIASES = {
    **dict.fromkeys(("uk", "u.k.", "england", "scotland", "wales", "great britain"), "GB"),
    **dict.fromkeys(("northern ireland", "britain"), "GB"),
    **dict.fromkeys(("u.s.", "u.s.a.", "america"), "US"),
    "russia": "RU",
}


@lru_cache(maxsize=4096)
def country_code(value: str) -> str:
    """The region a country cell names, for reading its row's phones.

    ``value`` is an ISO 3166 code (``FR``, ``FRA``), a country's name in
    English, any case or accents (``France``, ``Mexico``, ``México``), as
    pycountry knows them, or a calling code (``+33``, ``33``: its main
    region). Returns :data:`UNKNOWN_REGION` for anything else.
    """
    digits = value.strip().removeprefix("+")
    if digits.isascii() and digits.isdigit():
        return phonenumbers.region_code_for_country_code(int(digits))
    decomposed = unicodedata.normalize("NFKD", value.strip().lower())
    folded = "".join(c for c in decomposed if not unicodedata.combining(c))
    code = _COUNTRY_ALIASES.get(folded)
    if code is None:
        try:
            code = pycountry.countries.lookup(folded).alpha_2
        except LookupError:
            return UNKNOWN_REGION
    return code if code in phonenumbers.SUPPORTED_REGIONS else UNKNOWN_REGION


# -- text, names, vocabularies ---------------------------------------------------


def clean_bool(value: Any) -> Cleaned:
    """True or false from a spelling in :data:`BOOLEANS`, a JSON boolean, or JSON 0 and 1."""
    if isinstance(value, bool):
        return value, None
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value), None
    return _spelling(value, "boolean", BOOLEANS)


def keep_value(value: Any) -> Cleaned:
    """An untyped value as it came (CSV text, a JSON value), unless it is a non-finite number."""
    if isinstance(value, float) and not math.isfinite(value):
        return None, "invalid number: not finite"
    return value, None


# -- dates and numbers -----------------------------------------------------------


#: Dates of three numbers, month and day first in an order the column decides:
#: ``3/14/2021``, ``14-03-21``, with or without a time after them.
SLASH_DATE = re.compile(r"([0-9]{1,2})([/-])([0-9]{1,2})\2(?:[0-9]{4}|[0-9]{2})\b")
#: Day first, always: ``13.11.2021``.
_DOTTED_DATE = re.compile(r"[0-9]{1,2}\.[0-9]{1,2}\.[0-9]{4}\b")
#: Year first, as ISO 8601 but with slashes, dots or a space before the zone.
_YEAR_FIRST = re.compile(r"[0-9]{4}[-/.][0-9]{1,2}[-/.][0-9]{1,2}\b")
#: A month or day name, or a zone: ``Jan 15, 2016``, ``Mon, 15 Jan 2016 10:22:00 +0000``.
_NAMED = re.compile(r"[A-Za-z]{3}")
#: Unix time in seconds (9 or 10 digits: 1973 to 2286) or milliseconds (12 or 13).
_EPOCH = re.compile(r"[0-9]{9,10}(?:\.[0-9]+)?|[0-9]{12,13}")
#: Two defaults for dateutil: a part that differs between the two parses was not in the text.
_DEFAULTS = (datetime(2000, 1, 1), datetime(2001, 2, 2, 1, 1, 1, 1))


def _zone(name: str | None, offset: int | None) -> tzinfo | None:
    """dateutil's ``tzinfos``: offsets and UTC only, never the machine's zone or a guess."""
    if offset is not None:
        return timezone(timedelta(seconds=offset))
    if name is None:
        return None
    raise ValueError(f"unknown time zone {name}")


def _by_dateutil(text: str, day_first: bool) -> datetime | date | None:
    """``text`` parsed by dateutil, a date if it has no time; None unless it gives a whole date."""
    try:
        early, late = (
            dateutil.parser.parse(text, default=d, dayfirst=day_first, tzinfos=_zone)
            for d in _DEFAULTS
        )
    except (ValueError, OverflowError):
        return None
    if early.date() != late.date():
        return None  # no year, month or day in the text: "March 2020", "Tuesday", "10:22"
    if (early.hour, early.minute) != (late.hour, late.minute):
        return early.date()
    return early


def clean_date(value: Any, day_first: bool = False) -> Cleaned:
    """A date or time in ISO 8601: a date stays a date, a time with a zone becomes UTC (``…Z``),
    one without stays as given.

    Reads ISO 8601 (``T`` or space, fractions, offsets, ``Z``), RFC 2822, month
    names (``Jan 15, 2016``, ``15 Jan 2016``), ``20240122``, ``13.11.2021``
    (day first), dates like ``3/14/2021`` with or without a time and AM/PM
    (day first if ``day_first``), and Unix time in seconds or milliseconds,
    text or a JSON number. Python reads ISO 8601, dateutil the rest; nothing
    is filled in: a value without a year, month and day is invalid.
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = as_text(value, "date")[0]
    if not isinstance(value, str):
        return None, "invalid date: expected text or a number"
    parsed: datetime | date | None = None
    if _EPOCH.fullmatch(value):
        milliseconds = "." not in value and len(value) > 10
        parsed = datetime.fromtimestamp(float(value) / (1000 if milliseconds else 1), UTC)
    else:
        for iso in (date.fromisoformat, datetime.fromisoformat):
            with contextlib.suppress(ValueError):
                parsed = iso(value)
                break
    if parsed is None:
        slash = SLASH_DATE.match(value)
        if slash is not None:
            month = int(slash[3] if day_first else slash[1])
            if month > 12:
                first = "day" if day_first else "month"
                return None, f"invalid date: no month {month} (dates here are {first} first)"
        elif not (_DOTTED_DATE.match(value) or _YEAR_FIRST.match(value) or _NAMED.search(value)):
            return None, "invalid date: not a date or time in a known format"
        dotted = _DOTTED_DATE.match(value) is not None
        parsed = _by_dateutil(value, dotted or (day_first and slash is not None))
        if parsed is None:
            return None, "invalid date: no such date, or not in a known format"
    if not isinstance(parsed, datetime):
        return parsed.isoformat(), None
    if parsed.tzinfo is None:
        return parsed.isoformat(), None
    try:
        return parsed.astimezone(UTC).replace(tzinfo=None).isoformat() + "Z", None
    except OverflowError:  # e.g. 0001-01-01T00:00+02:00
        return None, "invalid date: out of range in UTC"


def clean_int(value: Any) -> Cleaned:
    """A whole number of at most 2**53: plain digits (no sign but ``-``, no leading zero)."""
    if isinstance(value, str):
        if len(value) <= 16 and INT_TEXT.fullmatch(value) and abs(int(value)) <= MAX_SAFE_INT:
            return int(value), None
        return None, "invalid integer: not a whole number in plain digits"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) <= MAX_SAFE_INT:
        return value, None
    return None, "invalid integer: not a whole number"


def clean_float(value: Any) -> Cleaned:
    """A finite decimal number, from plain decimal text or a JSON number."""
    if isinstance(value, str):
        number = float(value) if FLOAT_TEXT.fullmatch(value) else math.nan
    elif isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    else:
        number = math.nan
    if not math.isfinite(number):
        return None, "invalid number: not a decimal number"
    return number, None


# -- subscription groups -----------------------------------------------------------


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


def clean_groups(value: Any) -> Cleaned:
    """A list of ``{"id", "subscribed"}`` objects from JSON text, a JSON array or one object.

    ``subscribed`` defaults to true and takes the spellings of :data:`BOOLEANS`.
    """
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
    return entries, None


# -- which rule cleans which field -------------------------------------------------

#: The rule of each standard field but ``phone_number``, whose rule takes the row's
#: region (:func:`clean_phone`).
# -- translated values (mapping files) ----------------------------------------------


def translated(
    rule: Rule, values: dict[str, Any] | None = None, invert: bool = False, split: str | None = None
) -> Rule:
    """``rule`` behind a mapping file's translation of one column's values.

    ``values`` (keys trimmed and case-folded; ``"*"`` stands for any other
    value) replaces a cell before ``rule`` sees it; a cell it does not name
    goes to ``rule`` as it is. ``split`` turns text into a list of its
    non-empty parts (without spaces, quotes or brackets around them), sent
    as it is (a custom attribute).
    ``invert`` sends the opposite of the true/false ``rule`` returns; a
    value that is not true or false is then invalid.
    """

    def apply(value: Any) -> Cleaned:
        if values:
            key = str(value).strip().casefold() if isinstance(value, str | int | float) else None
            if key in values:
                value = values[key]
            elif "*" in values:
                value = values["*"]
        if split is not None and isinstance(value, str):
            parts = (part.strip(' "[]') for part in value.split(split))
            return [part for part in parts if part], None
        cleaned, reason = rule(value)
        if invert and reason is None:
            if not isinstance(cleaned, bool):
                return None, "invalid boolean: invert needs true or false"
            cleaned = not cleaned
        return cleaned, reason

    return apply


FIELD_RULES: dict[str, Rule] = {
    "email": clean_email,
    "customer_id": clean_customer_id,
    "firstname": partial(_short_text, what="firstname", limit=MAX_NAME),
    "lastname": partial(_short_text, what="lastname", limit=MAX_NAME),
    "gender": partial(_spelling, what="gender", vocabulary=GENDERS),
    "joined_at": clean_date,
    "unsubscribed_at": clean_date,
    "unsubscribed": clean_bool,
    "subscription_groups": clean_groups,
    GROUP_ID: partial(as_text, what="subscription group id"),
    GROUP_SUBSCRIBED: clean_bool,
}
#: The rule of each type a custom attribute may have; one without a type keeps its value.
TYPE_RULES: dict[str, Rule] = {
    "int": clean_int,
    "float": clean_float,
    "bool": clean_bool,
    "date": clean_date,
    "string": partial(as_text, what="text"),
}
