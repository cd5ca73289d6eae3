"""Seeded fixtures in the shape of each platform's published customer export.

Each generator returns a :class:`PlatformExport`: the rows as the platform
writes them (its header names, its date, phone, consent and id formats) and,
per row, what a correct import delivers, so tests and the figures script
(``python -m tests.platform_exports``) check every row against the row that
produced it.

Sources of the header names and value formats (public documentation and
public code read while building these; values are made up):

- Shopify, Customers > Export: ``Customer ID`` (guarded with a leading
  apostrophe so spreadsheets keep its digits), ``First Name``, ``Last Name``,
  ``Email``, ``Accepts Email Marketing`` (yes/no), ``Default Address ...``
  columns with ``Default Address Country Code`` (ISO), ``Phone`` as typed,
  ``Accepts SMS Marketing``, ``Total Spent``, ``Total Orders``, ``Note``,
  ``Tax Exempt``, ``Tags`` (comma separated). No creation time.
- Mailchimp, audience export (a zip of subscribed, unsubscribed and cleaned
  members): ``Email Address``, merge fields (``First Name``, ``Last Name``,
  ``Address``, ``Phone Number``), then ``MEMBER_RATING``, ``OPTIN_TIME``,
  ``OPTIN_IP``, ``CONFIRM_TIME``, ``CONFIRM_IP``, ``LATITUDE``, ``LONGITUDE``,
  ``GMTOFF``, ``DSTOFF``, ``TIMEZONE``, ``CC`` (ISO country), ``REGION``,
  ``LAST_CHANGED``, ``LEID``, ``EUID``, ``NOTES``, ``TAGS`` (``"A","B"``);
  the unsubscribed file adds ``UNSUB_TIME``, ``UNSUB_CAMPAIGN_TITLE``,
  ``UNSUB_CAMPAIGN_ID``, ``UNSUB_REASON``, ``UNSUB_REASON_OTHER``. Times are
  ``YYYY-MM-DD HH:MM:SS``.
- HubSpot, contacts export: ``Record ID`` (the CRM's id), ``First Name``,
  ``Last Name``, ``Email``, ``Phone Number``, ``Mobile Phone Number``,
  ``Country/Region`` (a name), ``Create Date`` (``YYYY-MM-DD HH:MM``),
  ``Lifecycle Stage``, ``Contact owner``, ``Marketing contact status``,
  ``Unsubscribed from all email`` (true/false, empty when never set).
- Klaviyo, profiles export: ``Email``, ``Phone Number``, ``First Name``,
  ``Last Name``, ``Organization``, ``City``, ``Country``, ``Zip Code``,
  ``Email Marketing Consent`` (SUBSCRIBED, UNSUBSCRIBED, NEVER_SUBSCRIBED),
  ``Profile Created On``, ``Klaviyo ID`` (26 characters).
- Salesforce, Data Loader export of Contact and Lead: API names (``Id``
  18 characters, ``AccountId``, ``MailingCountry`` or ``Country`` as names,
  ``Phone``, ``MobilePhone``, ``HomePhone``, ``HasOptedOutOfEmail``
  true/false, ``CreatedDate`` ``2021-09-19T20:55:24.000Z``, ``Company`` and
  ``IsConverted`` on leads). Data Loader before v61 wrote these headers in
  capitals (``ID``, ``HASOPTEDOUTOFEMAIL``), and v63 can again
  (``sfdc.extraction.allCapsHeaders``):
  https://github.com/forcedotcom/dataloader/issues/1095,
  https://github.com/forcedotcom/dataloader/issues/1499.
- Stripe, Customers > Export: ``id`` (``cus_...``), ``Description``,
  ``Email``, ``Name``, ``Created (UTC)`` (``YYYY-MM-DD HH:MM``), ``Delinquent``,
  ``Phone``, ``Address ...`` with ``Address Country`` (ISO); several
  customers may share an e-mail. The export's column picker names the id
  ``ID`` beside ``Created (UTC)`` (https://docs.cello.so/guides/attribution/
  stripe-reports); presets are detected in any case, so both spellings fit.
- Braze, user export (one JSON object per line): ``external_id``,
  ``braze_id``, ``first_name``, ``last_name``, ``email``, ``dob``,
  ``country`` (ISO), ``home_city``, ``phone``, ``gender`` (M, F, O, N, P, U),
  ``created_at`` (``2021-09-19 20:55:24.757 UTC``), ``email_subscribe``
  (opted_in, subscribed, unsubscribed), ``custom_attributes``.
- Iterable, users export: ``email``, ``userId``, ``signupDate``
  (``2021-09-19 20:55:24 +00:00``), ``profileUpdatedAt``, ``firstName``,
  ``lastName``, ``phoneNumber`` (E.164), ``emailListIds`` (``[1, 2]``);
  the field names, ``signupDate``'s format and ``emailListIds`` as an array
  are Iterable's own (https://support.iterable.com/hc/en-us/articles/
  217744303).
- WooCommerce, Analytics > Customers download: ``Name``, ``Username``,
  ``Last active``, ``Date registered``, ``Email``, ``Orders``,
  ``Total spend``, ``AOV``, ``Country / Region`` (ISO), ``City``,
  ``Region``, ``Postal code``. No phone. Those are the report table's
  headers (woocommerce ``client/admin/client/analytics/report/customers/
  table.js``, downloaded in the browser); a report too large for that is
  e-mailed with the headers of the REST controller's
  ``get_export_columns`` (``Last Active``, ``Sign Up``, ``Total Spend``,
  ``Postal Code``; woocommerce ``src/Admin/API/Reports/Customers/
  Controller.php``), https://github.com/woocommerce/woocommerce.
"""

from __future__ import annotations

import csv
import json
import random
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

#: (ISO code, country name, national numbers as people type them).
COUNTRIES = [
    ("US", "United States", ["(415) 555-0132", "415.555.0175", "212-555-0198"]),
    ("CA", "Canada", ["613 555 0135", "(416) 555-0110"]),
    ("FR", "France", ["06 12 34 01 72", "01 42 68 53 00", "07 81 23 45 67"]),
    ("MX", "Mexico", ["222 123 2885", "55 1234 5678"]),
    ("GB", "United Kingdom", ["07911 123456", "020 7946 0958"]),
    ("DE", "Germany", ["030 1234567", "0151 23456789"]),
]


@dataclass
class Expected:
    """What a correct import delivers for one row (None: the row does not say)."""

    email: str | None
    customer_id: str | None
    country: str
    unsubscribed: bool | None
    joined_at: str | None  # the creation time's first 19 characters in ISO 8601
    phones: dict[str, str] = field(default_factory=dict)  # payload key → national number
    gender: str | None = None


@dataclass
class PlatformExport:
    """One fixture: the preset that should apply, the file's name and rows."""

    preset: str
    filename: str
    header: list[str]
    rows: list[dict[str, Any]]
    expected: list[Expected]

    def write(self, directory: Path) -> Path:
        path = Path(directory) / self.filename
        if self.filename.endswith(".jsonl"):
            path.write_text("".join(json.dumps(row) + "\n" for row in self.rows))
        else:
            with path.open("w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=self.header, lineterminator="\r\n")
                writer.writeheader()
                writer.writerows(self.rows)
        return path


class _People:
    """The customers behind every export: names, e-mails (a few malformed or
    missing), a country with a national phone, and a creation time."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def person(self, i: int) -> dict[str, Any]:
        rng = self.rng
        code, name, phones = rng.choice(COUNTRIES)
        roll = rng.random()
        first = rng.choice(["Ana", "Ben", "Chloé", "David", "Emma", "Farid", "Grace", "Hiro"])
        last = rng.choice(["Smith", "García", "Dubois", "Müller", "Tanaka", "Okafor"])
        email = f"{first.lower()}.{last.lower()}{i}@example.com".replace("é", "e")
        email = email.replace("í", "i").replace("ü", "u")
        if roll < 0.04:
            email = f"{first.lower()}{i}-at-example.com"  # malformed: left out
        elif roll < 0.08:
            email = ""
        created = datetime(2019, 1, 1, tzinfo=UTC) + timedelta(
            seconds=rng.randrange(5 * 365 * 86400), milliseconds=rng.randrange(1000)
        )
        return {
            "first": first,
            "last": last,
            "email": email,
            "valid_email": email if "@" in email else None,
            "code": code,
            "country_name": name,
            "phone": rng.choice(phones) if rng.random() < 0.8 else "",
            "mobile": rng.choice(phones) if rng.random() < 0.5 else "",
            "created": created,
        }


def _iso(moment: datetime, seconds: bool = True) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S" if seconds else "%Y-%m-%dT%H:%M:00")


def e164(national: str, code: str) -> str:
    """``national`` as dialled in the country ``code``, in E.164."""
    import phonenumbers

    number = phonenumbers.parse(national, code)
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def shopify(n: int = 300, seed: int = 1) -> PlatformExport:
    people = _People(seed)
    header = [
        "Customer ID", "First Name", "Last Name", "Email", "Accepts Email Marketing",
        "Default Address Company", "Default Address Address1", "Default Address Address2",
        "Default Address City", "Default Address Province Code", "Default Address Country Code",
        "Default Address Zip", "Default Address Phone", "Phone", "Accepts SMS Marketing",
        "Total Spent", "Total Orders", "Note", "Tax Exempt", "Tags",
    ]  # fmt: skip
    rows, expected = [], []
    for i in range(n):
        p = people.person(i)
        cid = str(6812909554841 + i * 7919)
        accepts = people.rng.choice(["yes", "no"])
        rows.append(
            dict.fromkeys(header, "")
            | {
                "Customer ID": "'" + cid,
                "First Name": p["first"],
                "Last Name": p["last"],
                "Email": p["email"],
                "Accepts Email Marketing": accepts,
                "Default Address City": "Springfield",
                "Default Address Country Code": p["code"],
                "Phone": p["phone"],
                "Accepts SMS Marketing": "no",
                "Total Spent": f"{i * 3}.50",
                "Total Orders": str(i % 9),
                "Tax Exempt": "no",
                "Tags": "vip, newsletter" if i % 4 == 0 else "",
            }
        )
        phones = {"phone_number": p["phone"]} if p["phone"] else {}
        expected.append(Expected(p["valid_email"], cid, p["code"], accepts == "no", None, phones))
    return PlatformExport("shopify", "customers_export.csv", header, rows, expected)


_MAILCHIMP = [
    "Email Address", "First Name", "Last Name", "Address", "Phone Number", "MEMBER_RATING",
    "OPTIN_TIME", "OPTIN_IP", "CONFIRM_TIME", "CONFIRM_IP", "LATITUDE", "LONGITUDE", "GMTOFF",
    "DSTOFF", "TIMEZONE", "CC", "REGION", "LAST_CHANGED", "LEID", "EUID", "NOTES", "TAGS",
]  # fmt: skip
_UNSUB = ["UNSUB_TIME", "UNSUB_CAMPAIGN_TITLE", "UNSUB_CAMPAIGN_ID", "UNSUB_REASON"]
_UNSUB += ["UNSUB_REASON_OTHER"]


def mailchimp(n: int = 300, seed: int = 2, unsubscribed: bool = False) -> PlatformExport:
    people = _People(seed)
    header = _MAILCHIMP + (_UNSUB if unsubscribed else [])
    rows, expected = [], []
    for i in range(n):
        p = people.person(i)
        if not p["valid_email"]:  # Mailchimp holds no member without an e-mail address
            p["email"] = p["valid_email"] = f"member{i}@example.net"
        when = p["created"].strftime("%Y-%m-%d %H:%M:%S")
        row = dict.fromkeys(header, "") | {
            "Email Address": p["email"],
            "First Name": p["first"],
            "Last Name": p["last"],
            "Phone Number": p["phone"],
            "MEMBER_RATING": str(1 + i % 5),
            "OPTIN_TIME": when,
            "CONFIRM_TIME": when,
            "CC": p["code"],
            "LAST_CHANGED": when,
            "LEID": str(100000 + i),
            "EUID": "".join(people.rng.choices(string.hexdigits.lower()[:16], k=10)),
            "TAGS": '"Customer","VIP"' if i % 3 == 0 else "",
        }
        if unsubscribed:
            row["UNSUB_TIME"] = when
            row["UNSUB_REASON"] = "I no longer want to receive these emails"
        rows.append(row)
        phones = {"phone_number": p["phone"]} if p["phone"] else {}
        consent = True if unsubscribed else None
        expected.append(
            Expected(p["valid_email"], None, p["code"], consent, _iso(p["created"]), phones)
        )
    name = "unsubscribed_members.csv" if unsubscribed else "subscribed_members.csv"
    return PlatformExport(
        "mailchimp-unsubscribed" if unsubscribed else "mailchimp", name, header, rows, expected
    )


def hubspot(n: int = 300, seed: int = 3) -> PlatformExport:
    people = _People(seed)
    header = [
        "Record ID", "First Name", "Last Name", "Email", "Phone Number", "Mobile Phone Number",
        "Country/Region", "Create Date", "Lifecycle Stage", "Contact owner",
        "Marketing contact status", "Unsubscribed from all email",
    ]  # fmt: skip
    rows, expected = [], []
    for i in range(n):
        p = people.person(i)
        flag = people.rng.choice(["true", "false", ""])
        rows.append(
            {
                "Record ID": str(51 + i * 101),
                "First Name": p["first"],
                "Last Name": p["last"],
                "Email": p["email"],
                "Phone Number": p["phone"],
                "Mobile Phone Number": p["mobile"],
                "Country/Region": p["country_name"],
                "Create Date": p["created"].strftime("%Y-%m-%d %H:%M"),
                "Lifecycle Stage": "Lead",
                "Contact owner": "",
                "Marketing contact status": "Marketing contact",
                "Unsubscribed from all email": flag,
            }
        )
        # Mobile first: "Mobile Phone Number" is phone_number, "Phone Number" an attribute.
        phones = {"phone_number": p["mobile"]} if p["mobile"] else {}
        if p["phone"]:
            phones["other_phone_number"] = p["phone"]
        consent = {"true": True, "false": False}.get(flag)
        expected.append(
            Expected(p["valid_email"], None, p["code"], consent, _iso(p["created"], False), phones)
        )
    return PlatformExport("hubspot", "hubspot-crm-exports-all-contacts.csv", header, rows, expected)


def klaviyo(n: int = 300, seed: int = 4) -> PlatformExport:
    people = _People(seed)
    header = [
        "Email", "Phone Number", "First Name", "Last Name", "Organization", "Title", "Address",
        "City", "State / Region", "Country", "Zip Code", "Source", "Email Marketing Consent",
        "Email Marketing Consent Timestamp", "SMS Consent", "Profile Created On", "Last Active",
        "Klaviyo ID",
    ]  # fmt: skip
    rows, expected = [], []
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    for i in range(n):
        p = people.person(i)
        consent = people.rng.choice(["SUBSCRIBED", "UNSUBSCRIBED", "NEVER_SUBSCRIBED"])
        rows.append(
            dict.fromkeys(header, "")
            | {
                "Email": p["email"],
                "Phone Number": e164(p["phone"], p["code"]) if p["phone"] else "",
                "First Name": p["first"],
                "Last Name": p["last"],
                "City": "Town",
                "Country": p["country_name"],
                "Email Marketing Consent": consent,
                "Profile Created On": p["created"].strftime("%Y-%m-%d %H:%M:%S"),
                "Klaviyo ID": "01" + "".join(people.rng.choices(alphabet, k=24)),
            }
        )
        phones = {"phone_number": p["phone"]} if p["phone"] else {}
        expected.append(
            Expected(
                p["valid_email"],
                None,
                p["code"],
                consent != "SUBSCRIBED",
                _iso(p["created"]),
                phones,
            )  # fmt: skip
        )
    return PlatformExport("klaviyo", "klaviyo_profiles.csv", header, rows, expected)


def _salesforce_id(rng: random.Random, prefix: str) -> str:
    return prefix + "5g00000" + "".join(rng.choices(string.ascii_letters + string.digits, k=8))


def salesforce(
    n: int = 300, seed: int = 5, lead: bool = False, capitals: bool = False
) -> PlatformExport:
    people = _People(seed)
    if lead:
        header = [
            "Id", "LastName", "FirstName", "Company", "Street", "City", "State", "PostalCode",
            "Country", "Phone", "MobilePhone", "Email", "Status", "LeadSource", "IsConverted",
            "HasOptedOutOfEmail", "CreatedDate",
        ]  # fmt: skip
    else:
        header = [
            "Id", "AccountId", "LastName", "FirstName", "Salutation", "MailingStreet",
            "MailingCity", "MailingState", "MailingPostalCode", "MailingCountry", "Phone",
            "MobilePhone", "HomePhone", "Email", "Title", "LeadSource", "Birthdate",
            "HasOptedOutOfEmail", "CreatedDate",
        ]  # fmt: skip
    rows, expected = [], []
    for i in range(n):
        p = people.person(i)
        opted_out = people.rng.choice(["true", "false"])
        row = dict.fromkeys(header, "") | {
            "Id": _salesforce_id(people.rng, "00Q" if lead else "003") + "AAA",
            "LastName": p["last"],
            "FirstName": p["first"],
            ("Country" if lead else "MailingCountry"): p["country_name"],
            "Phone": p["phone"],
            "MobilePhone": p["mobile"],
            "Email": p["email"],
            "HasOptedOutOfEmail": opted_out,
            "CreatedDate": p["created"].strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        }
        if lead:
            row |= {"Company": "Acme", "Status": "Open - Not Contacted", "IsConverted": "false"}
        else:
            row |= {"AccountId": _salesforce_id(people.rng, "001") + "AAB"}
        rows.append(row)
        phones = {"phone_number": p["mobile"]} if p["mobile"] else {}
        if p["phone"]:
            phones["phone"] = p["phone"]
        expected.append(
            Expected(
                p["valid_email"], None, p["code"], opted_out == "true", _iso(p["created"]), phones
            )
        )
    if capitals:  # Data Loader before v61 wrote every header in capitals
        header = [h.upper() for h in header]
        rows = [{k.upper(): v for k, v in row.items()} for row in rows]
    return PlatformExport(
        "salesforce-lead" if lead else "salesforce-contact",
        "Lead.csv" if lead else "Contact.csv",
        header,
        rows,
        expected,
    )


def stripe(n: int = 300, seed: int = 6) -> PlatformExport:
    people = _People(seed)
    header = [
        "id", "Description", "Email", "Name", "Created (UTC)", "Card ID", "Delinquent", "Phone",
        "Address Line1", "Address City", "Address Country", "Currency", "Balance",
    ]  # fmt: skip
    rows, expected = [], []
    for i in range(n):
        p = people.person(i)
        if i and i % 10 == 0 and expected[-1].email:  # a second customer with the same e-mail
            p["email"] = p["valid_email"] = expected[-1].email
            p["code"], p["phone"] = expected[-1].country, ""
        rows.append(
            dict.fromkeys(header, "")
            | {
                "id": "cus_" + "".join(people.rng.choices(string.ascii_letters, k=14)),
                "Email": p["email"],
                "Name": f"{p['first']} {p['last']}",
                "Created (UTC)": p["created"].strftime("%Y-%m-%d %H:%M"),
                "Delinquent": "false",
                "Phone": p["phone"],
                "Address Country": p["code"],
                "Currency": "usd",
                "Balance": "0",
            }
        )
        phones = {"phone_number": p["phone"]} if p["phone"] else {}
        expected.append(
            Expected(p["valid_email"], None, p["code"], None, _iso(p["created"], False), phones)
        )
    return PlatformExport("stripe", "unified_customers.csv", header, rows, expected)


#: Braze's gender codes and what Blueshift is sent.
BRAZE_GENDERS = {"M": "male", "F": "female", "O": "unknown", "N": "unknown"}
BRAZE_GENDERS |= {"P": "unknown", "U": "unknown"}


def braze(n: int = 300, seed: int = 7) -> PlatformExport:
    people = _People(seed)
    header = ["external_id", "braze_id", "first_name", "last_name", "email", "dob", "country"]
    header += ["home_city", "phone", "gender", "created_at", "email_subscribe", "custom_attributes"]
    rows, expected = [], []
    for i in range(n):
        p = people.person(i)
        gender = people.rng.choice(list(BRAZE_GENDERS))
        subscribe = people.rng.choice(["opted_in", "subscribed", "unsubscribed"])
        external = f"user-{1000 + i}" if i % 25 else None  # a few users known by e-mail only
        row = {
            "braze_id": "".join(people.rng.choices("0123456789abcdef", k=24)),
            "first_name": p["first"],
            "last_name": p["last"],
            "dob": "1984-07-21",
            "country": p["code"],
            "home_city": "Town",
            "gender": gender,
            "created_at": p["created"].strftime("%Y-%m-%d %H:%M:%S.")
            + f"{p['created'].microsecond // 1000:03d} UTC",
            "email_subscribe": subscribe,
            "custom_attributes": {"loyalty_tier": "gold"},
        }
        if external:
            row["external_id"] = external
        if p["email"]:
            row["email"] = p["email"]
        if p["phone"]:
            row["phone"] = p["phone"]
        rows.append(row)
        phones = {"phone_number": p["phone"]} if p["phone"] else {}
        expected.append(
            Expected(
                p["valid_email"],
                external,
                p["code"],
                subscribe == "unsubscribed",
                _iso(p["created"]),
                phones,
                BRAZE_GENDERS[gender],
            )  # fmt: skip
        )
    return PlatformExport("braze", "braze_users.jsonl", header, rows, expected)


def iterable(n: int = 300, seed: int = 8) -> PlatformExport:
    people = _People(seed)
    header = ["email", "userId", "signupDate", "profileUpdatedAt", "firstName", "lastName"]
    header += ["phoneNumber", "emailListIds"]
    rows, expected = [], []
    for i in range(n):
        p = people.person(i)
        user_id = f"u{880000 + i}" if i % 5 else ""
        stamp = p["created"].strftime("%Y-%m-%d %H:%M:%S +00:00")
        rows.append(
            {
                "email": p["email"],
                "userId": user_id,
                "signupDate": stamp,
                "profileUpdatedAt": stamp,
                "firstName": p["first"],
                "lastName": p["last"],
                "phoneNumber": e164(p["phone"], p["code"]) if p["phone"] else "",
                "emailListIds": "[12345, 67890]" if i % 2 else "[]",
            }
        )
        phones = {"phone_number": p["phone"]} if p["phone"] else {}
        expected.append(
            Expected(p["valid_email"], user_id or None, p["code"], None, _iso(p["created"]), phones)
        )
    return PlatformExport("iterable", "iterable_users.csv", header, rows, expected)


def woocommerce(n: int = 300, seed: int = 9, emailed: bool = False) -> PlatformExport:
    people = _People(seed)
    header = ["Name", "Username", "Last active", "Date registered", "Email", "Orders"]
    header += ["Total spend", "AOV", "Country / Region", "City", "Region", "Postal code"]
    # The e-mailed export of a large report names four columns otherwise.
    renamed = {"Last active": "Last Active", "Date registered": "Sign Up"}
    renamed |= {"Total spend": "Total Spend", "Postal code": "Postal Code"}
    if emailed:
        header = [renamed.get(h, h) for h in header]
    rows, expected = [], []
    for i in range(n):
        p = people.person(i)
        when = p["created"].strftime("%Y-%m-%d %H:%M:%S")
        row = {
            "Name": f"{p['first']} {p['last']}",
            "Username": f"{p['first'].lower()}{i}",
            "Last active": when,
            "Date registered": when,
            "Email": p["email"],
            "Orders": str(i % 7),
            "Total spend": f"{i * 2.5:.2f}",
            "AOV": "12.50",
            "Country / Region": p["code"],
            "City": "Town",
            "Region": "",
            "Postal code": "12345",
        }
        rows.append({(renamed.get(k, k) if emailed else k): v for k, v in row.items()})
        expected.append(Expected(p["valid_email"], None, p["code"], None, _iso(p["created"])))
    name = "customers-report-export.csv" if emailed else "customers.csv"
    return PlatformExport("woocommerce", name, header, rows, expected)


#: Every fixture, by a short name.
EXPORTS: dict[str, Callable[[], PlatformExport]] = {
    "shopify": shopify,
    "mailchimp": mailchimp,
    "mailchimp-unsubscribed": lambda: mailchimp(unsubscribed=True),
    "hubspot": hubspot,
    "klaviyo": klaviyo,
    "salesforce-contact": salesforce,
    "salesforce-lead": lambda: salesforce(lead=True),
    "salesforce-contact-capitals": lambda: salesforce(capitals=True),
    "stripe": stripe,
    "braze": braze,
    "iterable": iterable,
    "woocommerce": woocommerce,
    "woocommerce-emailed": lambda: woocommerce(emailed=True),
}


def audit(export: PlatformExport, applied: list[dict[str, Any]]) -> dict[str, int]:
    """Compare what the API received with what each row should deliver.

    Returns counts: ``left_out`` (rows with a valid e-mail or an id the preset
    maps to customer_id that never arrived), ``ids_altered``,
    ``wrong_country_phones`` (a phone not the row's national number in the
    row's country, or a phone the row did not have), ``joined_at_wrong``,
    ``unsubscribed_wrong`` and ``gender_wrong``. Rows sharing an e-mail are
    merged into one customer, so only their arrival is checked.
    """
    import phonenumbers

    by_id = {c["customer_id"]: c for c in applied if "customer_id" in c}
    by_email = {c["email"]: c for c in applied if "email" in c}
    shared: set[str | None] = set()
    seen: set[str] = set()
    for e in export.expected:
        if e.email in seen:
            shared.add(e.email)
        if e.email:
            seen.add(e.email)
    counts = dict.fromkeys(
        ["left_out", "ids_altered", "wrong_country_phones", "joined_at_wrong"], 0
    ) | {"unsubscribed_wrong": 0, "gender_wrong": 0}
    for e in export.expected:
        sent = by_id.get(e.customer_id) if e.customer_id else by_email.get(e.email or "")
        if sent is None:
            counts["left_out"] += bool(e.email or e.customer_id)
            continue
        if e.email in shared:
            continue
        if sent.get("email") != e.email or sent.get("customer_id") != e.customer_id:
            counts["ids_altered"] += 1
        region = phonenumbers.country_code_for_region(e.country)
        for key, value in sent.items():
            if isinstance(value, str) and value.startswith("+") and key not in e.phones:
                counts["wrong_country_phones"] += 1
        for key, national in e.phones.items():
            number = sent.get(key)
            if number != e164(national, e.country) or (
                phonenumbers.parse(number).country_code != region
            ):
                counts["wrong_country_phones"] += 1
        if e.joined_at and str(sent.get("joined_at", ""))[:19] != e.joined_at:
            counts["joined_at_wrong"] += 1
        if sent.get("unsubscribed") is not e.unsubscribed:
            counts["unsubscribed_wrong"] += 1
        if e.gender and sent.get("gender") != e.gender:
            counts["gender_wrong"] += 1
    return counts


def record_ids_unseen(
    export: PlatformExport, applied: list[dict[str, Any]], rejects_path: Path
) -> int:
    """How many rows with a valid e-mail have a platform record id (the preset's
    ``record_id``) found neither in a delivered customer nor in a ``conflict``
    line of the rejects file: ids that vanished without a word (0 without one)."""
    from importer.presets import load_preset

    preset = load_preset(export.preset).fit(export.header)
    if preset.record_id is None:
        return 0
    field = preset.columns[preset.record_id].target
    seen = {str(c[field]) for c in applied if field in c}
    if rejects_path.exists():
        with rejects_path.open(encoding="utf-8") as f:
            lines = (
                [json.loads(line) for line in f]
                if rejects_path.suffix == ".jsonl"
                else list(csv.DictReader(f))
            )
        seen |= {str(r["_value"]) for r in lines if r.get("_outcome") == "conflict"}
    return sum(
        1
        for row, e in zip(export.rows, export.expected, strict=True)
        if e.email and str(row[preset.record_id]) not in seen
    )


def figures(directory: Path) -> list[dict[str, Any]]:
    """Import every fixture with default flags into a fake API; one line of figures each.

    Each line: the fixture, the preset detected, rows, customers delivered
    (rows sharing an e-mail arrive as one), rows rejected, fields dropped,
    conflict lines, the :func:`audit` counts (all 0 when every customer arrived
    correctly) and :func:`record_ids_unseen`.
    """
    from importer import ImportOptions, import_file
    from importer.fake_api import FakeApiConfig, FakeApiServer

    lines = []
    for name, make in EXPORTS.items():
        export = make()
        path = export.write(directory)
        with FakeApiServer(FakeApiConfig(api_key="figures")) as server:
            # The report, and the rejects file beside it, stay in ``directory``.
            report_path = Path(directory) / f"{name}.report.json"
            suffix = ".jsonl" if export.filename.endswith(".jsonl") else ".csv"
            rejects_path = Path(directory) / f"{name}.rejects{suffix}"
            options = ImportOptions(
                api_key="figures",
                base_url=server.url,
                rate=1000.0,
                report_path=report_path,
                rejects_path=rejects_path,
            )
            report = import_file(path, options)
            counts = audit(export, server.state.applied)
            unseen = record_ids_unseen(export, server.state.applied, rejects_path)
        lines.append(
            {
                "fixture": name,
                "preset": report.preset,
                "rows": report.rows_read,
                "delivered": report.succeeded,
                "rejected": report.rejected,
                "merged": report.merged_duplicates,
                "dropped_fields": report.dropped_fields,
                "conflicts": report.identifier_conflicts,
                **counts,
                "record_ids_unseen": unseen,
            }
        )
    return lines


def main() -> None:
    """Print :func:`figures` as a Markdown table (``python -m tests.platform_exports``)."""
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        lines = figures(Path(directory))
    keys = list(lines[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + " --- |" * len(keys))
    for line in lines:
        print("| " + " | ".join(str(line[k]) for k in keys) + " |")


if __name__ == "__main__":
    main()
