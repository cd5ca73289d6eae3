"""The import script people write by hand, as the benchmark's point of comparison.

It reads the whole CSV with ``pandas.read_csv``, walks it with ``iterrows``,
renames the columns it knows, cuts the rows into slices of 50 and posts each
slice with ``requests.post``, one at a time, with no pacing and no retries:
a failed call is counted and its customers are lost. It does no cleaning
beyond leaving empty cells out (the API would reject ``NaN``).

It prints one JSON line on standard output for the benchmark to read::

    {"rows": ..., "calls": ..., "sent": ..., "status_counts": {"200": ...}}

Usage::

    BLUESHIFT_API_KEY=... python benchmarks/baseline.py FILE --base-url URL [--dry-run]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter

import pandas as pd
import requests

COLUMNS = {
    "Customer ID": "customer_id",
    "Email Address": "email",
    "First Name": "firstname",
    "Last Name": "lastname",
    "Phone": "phone_number",
    "Gender": "gender",
    "Joined At": "joined_at",
    "Unsubscribed": "unsubscribed",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("path")
    parser.add_argument("--base-url", default="https://api.getblueshift.com")
    parser.add_argument("--dry-run", action="store_true", help="Build every batch, post nothing.")
    args = parser.parse_args(argv)
    api_key = os.environ.get("BLUESHIFT_API_KEY", "")
    url = args.base_url.rstrip("/") + "/api/v1/customers/bulk"

    if args.path.endswith((".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz")):
        df = pd.read_json(args.path, lines=True, dtype=str)
    else:
        df = pd.read_csv(args.path, dtype=str)
    statuses: Counter[str] = Counter()
    calls = sent = 0
    for start in range(0, len(df), 50):
        batch = []
        for _, row in df.iloc[start : start + 50].iterrows():
            customer = {}
            for column, value in row.items():
                if pd.isna(value) or value == "":
                    continue
                key = COLUMNS.get(str(column), str(column).lower())
                customer[key] = value.strip() if isinstance(value, str) else value
            batch.append(customer)
        calls += 1
        sent += len(batch)
        if args.dry_run:
            continue
        try:
            response = requests.post(url, json={"customers": batch}, auth=(api_key, ""), timeout=30)
        except requests.RequestException as exc:
            statuses[type(exc).__name__] += 1
            continue
        statuses[str(response.status_code)] += 1
    summary = {"rows": len(df), "calls": calls, "sent": sent, "status_counts": dict(statuses)}
    sys.stdout.write(json.dumps(summary) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
