"""Seeded generator of realistic customer files (CSV or JSONL, optionally gzipped).

Used for the sample data, the tests and the benchmark. Rows are produced one
at a time, so files of any size are written in constant memory.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import random
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import orjson

HEADER = [
    "Customer ID",
    "Email Address",
    "First Name",
    "Last Name",
    "Phone",
    "Gender",
    "Joined At",
    "Unsubscribed",
    "loyalty_points",
    "City",
]
FIRST = [
    "Ana",
    "Ben",
    "Chloé",
    "David",
    "Emma",
    "Farid",
    "Grace",
    "Hiro",
    "Ines",
    "Jonas",
    "Kofi",
    "Lena",
    "Mateo",
    "Nora",
    "Omar",
    "Priya",
    "Quinn",
    "Rosa",
    "Sven",
    "Tara",
]
LAST = [
    "Smith",
    "García",
    "Müller",
    "Nguyen",
    "O'Brien",
    "Rossi",
    "Kowalski",
    "Dubois",
    "Andersson",
    "Okafor",
    "Tanaka",
    "Silva",
    "Novak",
    "Haddad",
    "Jensen",
    "Moreau",
]
CITIES = ["Boston", "Austin", "Denver", "Seattle", "Chicago", "Portland", "Miami", "Atlanta"]
DOMAINS = ["example.com", "mail.example.org", "example.net", "shop.example.co.uk"]
GENDERS = ["M", "F", "female", "male", "", "unknown", "f", "m"]
UNSUB = ["false", "true", "no", "yes", "0", "1", ""]
#: The ``Subscription Groups`` column of ``with_groups`` files: JSON text, or empty.
GROUPS = [
    "",
    '[{"id": "newsletter", "subscribed": true}]',
    '[{"id": "newsletter", "subscribed": true}, {"id": "offers", "subscribed": false}]',
    '[{"id": "sms", "subscribed": "yes"}]',
    '{"id": 42, "subscribed": false}',
]


def _phone(rng: random.Random) -> str:
    n = f"{rng.randint(201, 989)}{rng.randint(200, 999)}{rng.randint(0, 9999):04d}"
    shape = rng.random()
    if shape < 0.4:
        return f"+1{n}"
    if shape < 0.6:
        return f"({n[:3]}) {n[3:6]}-{n[6:]}"
    if shape < 0.75:
        return f"{n[:3]}-{n[3:6]}-{n[6:]}"
    if shape < 0.85:
        return f"+44 7{rng.randint(100, 999)} {rng.randint(100000, 999999)}"
    if shape < 0.95:
        return n
    return ""


def generate_rows(
    n: int, seed: int = 7, invalid_every: int = 0, with_groups: bool = False
) -> Iterator[list[str]]:
    """Yield ``n`` rows matching :data:`HEADER`.

    With ``invalid_every`` k > 0, every k-th row lacks both identifiers and
    every (k+3)-th row has a malformed email. With ``with_groups``, each row
    ends with a ``Subscription Groups`` cell (the other cells stay the same).
    """
    rng = random.Random(seed)
    groups = random.Random(seed + 1)
    start = date(2018, 1, 1)
    for i in range(1, n + 1):
        first = rng.choice(FIRST)
        last = rng.choice(LAST)
        cid = f"C{i:08d}"
        local = f"{first}.{last}.{i}".lower().replace("'", "").replace(" ", "")
        email = f"{local}@{rng.choice(DOMAINS)}"
        if rng.random() < 0.3:
            email = email.upper() if rng.random() < 0.5 else f"  {email} "
        if invalid_every and i % invalid_every == 0:
            cid, email = "", ""
        elif invalid_every and i % (invalid_every + 3) == 0:
            email = f"{local}-at-{rng.choice(DOMAINS)}"
        joined = (start + timedelta(days=rng.randint(0, 2500))).isoformat()
        row = [
            cid,
            email,
            first,
            last,
            _phone(rng),
            rng.choice(GENDERS),
            joined,
            rng.choice(UNSUB),
            str(rng.randint(0, 5000)),
            rng.choice(CITIES),
        ]
        if with_groups:
            # A generator of its own, so the other cells are those of a file without groups.
            row.append(GROUPS[groups.randrange(len(GROUPS))])
        yield row


def write_file(
    path: Path, n: int, seed: int = 7, invalid_every: int = 0, with_groups: bool = False
) -> Path:
    """Write ``n`` rows to ``path`` as CSV or JSONL (by extension; ``.gz`` compresses)."""
    path = Path(path)
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    opener = gzip.open if path.name.endswith(".gz") else open
    rows = generate_rows(n, seed, invalid_every, with_groups)
    header = [*HEADER, "Subscription Groups"] if with_groups else HEADER
    with opener(path, "wb") as raw:
        if name.endswith((".jsonl", ".ndjson")):
            for row in rows:
                obj = {k: v for k, v in zip(header, row, strict=True) if v != ""}
                raw.write(orjson.dumps(obj) + b"\n")
        else:
            text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
            writer = csv.writer(text, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)
            text.flush()
            text.detach()
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path", type=Path)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--invalid-every", type=int, default=0)
    parser.add_argument(
        "--with-groups", action="store_true", help="Add a Subscription Groups column (JSON)."
    )
    args = parser.parse_args()
    write_file(args.path, args.rows, args.seed, args.invalid_every, args.with_groups)


if __name__ == "__main__":
    main()
