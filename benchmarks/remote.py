"""Benchmark: one gzip CSV imported from a local S3-compatible server and from the local disk.

Starts moto's S3 server on a loopback port in this process and puts the
generated file (cached under ``benchmarks/data/``) in it, then imports the
same file twice, as ``s3://…`` and as a path, each with ``python -m importer
run`` (state on, as the command's default) against the fake API in its own
process, uncapped. Peak RSS is the client's own (``os.wait4``); the time to
the first request runs from the client's start to the first customer the
fake API records. Targets: the S3 run's peak RSS within 10 % of the local
run's, and its first request within 3 s of its start.

    python benchmarks/remote.py --rows 1000000          # the issue's figures
    python benchmarks/remote.py --rows 20000 --repeat 1 # a quick look
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(ROOT))

from benchmarks.run import API_KEY, RecordWatcher, ensure_data, fake_api, run_client  # noqa: E402

MAX_RSS_RATIO = 1.10
MAX_FIRST_REQUEST_S = 3.0


def start_s3(data: Path) -> tuple[object, str, str]:
    """moto's S3 server on 127.0.0.1 holding ``data``: ``(server, endpoint, object URL)``."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        os.environ[name] = value
    import fsspec
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    fs = fsspec.filesystem("s3", endpoint_url=endpoint)
    fs.mkdir("bench")
    fs.put_file(str(data), f"bench/{data.name}")
    return server, endpoint, f"s3://bench/{data.name}"


def import_once(source: str, endpoint: str, args: argparse.Namespace) -> tuple[float, float, float]:
    """Import ``source`` once against a fresh fake API: peak RSS MB, first request s, wall s."""
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        record = workdir / "applied.jsonl"
        with fake_api(record, None, 1) as url:
            watcher = RecordWatcher(record)
            watcher.start()
            cmd = [sys.executable, "-m", "importer", "run", source, "--base-url", url]
            cmd += ["--rate", "1000000", "--concurrency", str(args.concurrency), "--quiet"]
            cmd += ["--state", str(workdir / "state.sqlite"), "--status-every", "0"]
            env = {**os.environ, "BLUESHIFT_API_KEY": API_KEY, "AWS_ENDPOINT_URL": endpoint}
            try:
                _, wall, _, rss, first, _ = run_client(cmd, env, workdir, watcher)
            finally:
                watcher.stop()
    assert first is not None, "no request reached the fake API"
    return rss, first, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="medians of N runs of each")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--data-dir", type=Path, default=HERE / "data")
    args = parser.parse_args()
    data = ensure_data(args.rows, 7, 97, args.data_dir, ".csv.gz")
    server, endpoint, url = start_s3(data)
    results: dict[str, list[tuple[float, float, float]]] = {"local": [], "s3": []}
    try:
        for _ in range(args.repeat):  # interleaved, so both see the same machine load
            results["local"].append(import_once(str(data), endpoint, args))
            results["s3"].append(import_once(url, endpoint, args))
    finally:
        server.stop()  # type: ignore[attr-defined]
    size = data.stat().st_size / 2**20
    print(f"{args.rows:,} rows, {size:.1f} MiB gzip CSV, medians of {args.repeat} run(s)")
    print(f"{'input':<8} {'peak RSS MB':>12} {'first request s':>16} {'wall s':>8}")
    medians = {}
    for name, runs in results.items():
        medians[name] = [statistics.median(values) for values in zip(*runs, strict=True)]
        rss, first, wall = medians[name]
        print(f"{name:<8} {rss:>12.1f} {first:>16.3f} {wall:>8.1f}")
    ratio = medians["s3"][0] / medians["local"][0]
    first = medians["s3"][1]
    print(f"{'PASS' if ratio <= MAX_RSS_RATIO else 'FAIL'} peak RSS from S3 = {ratio:.3f} × local")
    ok = first <= MAX_FIRST_REQUEST_S
    print(f"{'PASS' if ok else 'FAIL'} first request from S3 {first:.3f} s after start")


if __name__ == "__main__":
    main()
