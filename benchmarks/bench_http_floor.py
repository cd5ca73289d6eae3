"""The HTTP client's own cost: CPU of bare aiohttp POSTs of 50 customers, no importer code.

Starts the fake API in its own process (as ``benchmarks/run.py`` does, with a
``--record`` file), then POSTs the same 50-customer body ``--calls`` times
over ``--concurrency`` keep-alive connections with nothing but an
``aiohttp.ClientSession`` and reads each answer. The figure is the CPU
(user + sys) of this process during the loop, per call and per 1,000,000
customers: the least any importer built on aiohttp spends sending on this
machine, before it reads or cleans a single row.

    .venv/bin/python -m benchmarks.bench_http_floor --calls 4000 --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import tempfile
from pathlib import Path

import aiohttp
import orjson

from benchmarks.run import API_KEY, BATCH, fake_api
from importer.sending import BULK_PATH, basic_auth_header


def _body() -> bytes:
    customers = [
        {
            "city": "Miami",
            "customer_id": f"C{i:08d}",
            "email": f"kofi.obrien.{i}@shop.example.co.uk",
            "firstname": "Kofi",
            "gender": "male",
            "joined_at": "2018-10-24",
            "lastname": "O'Brien",
            "loyalty_points": 704,
            "phone_number": "+17492965991",
            "unsubscribed": False,
        }
        for i in range(BATCH)
    ]
    return orjson.dumps({"customers": customers})


async def _post_all(url: str, calls: int, concurrency: int) -> float:
    """CPU seconds of this process spent making ``calls`` POSTs."""
    body = _body()
    headers = {"Authorization": basic_auth_header(API_KEY), "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        left = iter(range(calls))

        async def worker() -> None:
            for _ in left:
                async with session.post(url, data=body) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"the fake API answered {resp.status}")

        before = resource.getrusage(resource.RUSAGE_SELF)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        after = resource.getrusage(resource.RUSAGE_SELF)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv: list[str] | None = None) -> float:
    """Print the figure; return the median CPU seconds per call."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3, help="Runs; the median is reported.")
    args = parser.parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(max(1, args.repeat)):
            record = Path(tmp) / f"record-{run}.jsonl"
            with fake_api(record, None, 1) as base:
                cpu = asyncio.run(_post_all(base + BULK_PATH, args.calls, args.concurrency))
            with record.open("rb") as lines:
                applied = sum(1 for _ in lines)
            if applied != args.calls * BATCH:
                raise RuntimeError(
                    f"the fake API applied {applied} customers, not {args.calls * BATCH}"
                )
            runs.append(cpu / args.calls)
    per_call = statistics.median(runs)
    each = ", ".join(f"{r * 1000:.3f}" for r in runs)
    print(
        f"{args.calls} calls of {BATCH} customers, concurrency {args.concurrency}: "
        f"{per_call * 1000:.3f} ms CPU per call (runs: {each} ms), "
        f"{per_call * 1_000_000 / BATCH:.1f} CPU-s per 1M customers"
    )
    return per_call


if __name__ == "__main__":
    main()
