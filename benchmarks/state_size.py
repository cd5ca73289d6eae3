"""The state's size per customer: at rest and at peak (database + WAL), over two nights.

Drives the state exactly as a run does, without the network: a
``--changed-only`` run of N customers confirmed in batches of 50 (night 1,
everyone new), then a second ``--changed-only`` run of the same customers
with one in ten changed (night 2: the producer looks every customer up and
the changed ones are written again). It adds up the sizes
of ``state.sqlite`` and ``state.sqlite-wal`` as each commit and checkpoint
starts (when the WAL is fullest); the largest sum is the peak.
At rest is the database after the night's run finished. Written is what the
process wrote to files (``wchar`` of ``/proc/self/io``, Linux only):
database, WAL and checkpoints together.

    .venv/bin/python -m benchmarks.state_size --customers 100000
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
from pathlib import Path
from typing import Any

from importer.records import Customer, Outcome
from importer.state import Account, ConfirmationWriter, Fingerprint, StateReader, StateStore

BATCH = 50
CHUNK = 5_000


def _written() -> int | None:
    """Bytes this process wrote to files so far (None where /proc/self/io is missing)."""
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _customers(n: int, night: int) -> list[Customer]:
    return [
        Customer(
            {
                # In no particular order, as real e-mails are.
                "email": f"{hashlib.md5(str(i).encode()).hexdigest()[:10]}.{i}@example.com",
                "customer_id": f"C{i:08d}",
                "first_name": "Ada",
                "city": "Oslo",
                # One customer in ten changes between the nights.
                "points": i + (night if i % 10 == 0 else 0),
            },
            i,
            i + 1,
        )
        for i in range(1, n + 1)
    ]


def _night(path: Path, source: Path, n: int, night: int, account: Account) -> dict[str, Any]:
    files = (path, path.with_name(path.name + "-wal"))
    peak = 0
    written = _written()
    fingerprint = Fingerprint(str(source), n, night)
    with StateStore(path) as store:
        run = store.begin_run(fingerprint, {"batch_size": BATCH})
        reader = StateReader(store, run, account)
        writer = ConfirmationWriter(store, run, account)

        def sample(sql: str) -> None:
            # Before a commit or a checkpoint starts, the WAL holds all it will hold.
            if sql.startswith(("COMMIT", "PRAGMA wal_checkpoint")):
                nonlocal peak
                peak = max(peak, sum(f.stat().st_size for f in files if f.exists()))

        writer.conn.set_trace_callback(sample)
        customers = _customers(n, night)
        sent = 0
        for start in range(0, n, CHUNK):
            chunk, _ = reader.skip_unchanged(customers[start : start + CHUNK])
            sent += len(chunk)
            for b in range(0, len(chunk), BATCH):
                writer.record([Outcome(c, True) for c in chunk[b : b + BATCH]], None)
        writer.finish("completed", "0" * 64)
        writer.close()
        reader.close()
    after = _written()
    return {
        "night": night,
        "sent": sent,
        "at_rest": sum(f.stat().st_size for f in files if f.exists()),
        "peak": peak,
        "written": None if written is None or after is None else after - written,
    }


def measure(customers: int, directory: Path) -> list[dict[str, Any]]:
    """Two nights of ``customers`` into a fresh state in ``directory``; one dict per night."""
    source = directory / "customers.csv"
    account = Account("https://api.getblueshift.com", "benchmark-key")
    path = directory / "state.sqlite"
    return [_night(path, source, customers, night, account) for night in (1, 2)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--customers", type=int, default=100_000)
    args = parser.parse_args(argv)
    n = args.customers
    with tempfile.TemporaryDirectory() as tmp:
        nights = measure(n, Path(tmp))
        state = Path(tmp) / "state.sqlite"
        emails = state.read_bytes().count(b"@")
    print(f"{n} customers, bytes per customer (goal: at rest <= 64, peak <= 96)")
    print("| night | sent | at rest | peak (db + WAL) | written |")
    print("| --- | --- | --- | --- | --- |")
    for r in nights:
        written = "n/a" if r["written"] is None else f"{r['written'] / n:.0f}"
        print(
            f"| {r['night']} | {r['sent']} | {r['at_rest'] / n:.1f} | {r['peak'] / n:.1f} "
            f"| {written} |"
        )
    print(f"'@' bytes in the state file: {emails}")


if __name__ == "__main__":
    main()
