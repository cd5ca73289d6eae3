"""Shared fixtures: the fake API, a real Redis server, an S3-compatible server and an HTTP
file server on loopback ports chosen by the OS, data builders, the CLI."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from benchmarks.datagen import HEADER, generate_rows, write_file
from benchmarks.redis_server import RedisServer
from importer.cli import main
from importer.fake_api import DEFAULT_KEY, FakeApiConfig, FakeApiServer
from importer.options import ImportOptions
from importer.outcomes import ImportReport

API_KEY = DEFAULT_KEY


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run each test in its temp dir: a run's default rejects file lands in the working one.
    Subprocesses started there still import this tree's package."""
    monkeypatch.chdir(tmp_path)
    root = str(Path(__file__).resolve().parent.parent)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    )


@pytest.fixture
def fake_api() -> Iterator[FakeApiServer]:
    """A well-behaved fake API with no rate limit."""
    with FakeApiServer(FakeApiConfig(api_key=API_KEY)) as server:
        yield server


@pytest.fixture
def make_fake_api() -> Iterator[Callable[..., FakeApiServer]]:
    """Start fake APIs with a given :class:`FakeApiConfig`; all are stopped afterwards."""
    servers: list[FakeApiServer] = []

    def start(**config: Any) -> FakeApiServer:
        config.setdefault("api_key", API_KEY)
        server = FakeApiServer(FakeApiConfig(**config)).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def start_redis(workdir: Path) -> RedisServer:
    """A real Redis server for a test; a test needing it fails (never skips) without one."""
    try:
        return RedisServer(workdir)
    except RuntimeError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One Redis server for the whole session; tests keep apart by their keys."""
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def make_redis(tmp_path: Path) -> Iterator[Callable[[], RedisServer]]:
    """Start Redis servers of a test's own (to stop mid-run); all are stopped afterwards."""
    servers: list[RedisServer] = []

    def start() -> RedisServer:
        servers.append(start_redis(tmp_path))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def fast_options(server: FakeApiServer, **changes: Any) -> ImportOptions:
    """Options aimed at ``server`` with a high rate and near-zero backoff waits."""
    base: dict[str, Any] = {
        "api_key": API_KEY,
        "base_url": server.url,
        "rate": 1000.0,
        "concurrency": 4,
        "backoff_base": 0.001,
        "max_backoff": 0.01,
        "timeout": 5.0,
    }
    base.update(changes)
    return ImportOptions(**base)


def stop_after(succeeded: int) -> tuple[threading.Event, Callable[[ImportReport], None]]:
    """A ``stop`` event and an ``observer`` that sets it once ``succeeded`` customers are
    delivered: a run interrupted part-way, to be resumed."""
    stop = threading.Event()

    def observer(report: ImportReport) -> None:
        if report.succeeded >= succeeded:
            stop.set()

    return stop, observer


def write_csv(
    path: Path, rows: list[list[str]] | list[dict[str, str]], header: list[str] | None = None
) -> Path:
    """Write rows (lists under ``header``, or dicts) as a UTF-8 CSV file."""
    buf = io.StringIO()
    if rows and isinstance(rows[0], dict):
        header = header or list(rows[0])
        writer = csv.DictWriter(buf, fieldnames=header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)  # type: ignore[arg-type]
    else:
        writer2 = csv.writer(buf, lineterminator="\n")
        writer2.writerow(header or HEADER)
        writer2.writerows(rows)  # type: ignore[arg-type]
    path.write_text(buf.getvalue(), encoding="utf-8")
    return path


@pytest.fixture
def customers_file(tmp_path: Path) -> Callable[..., Path]:
    """Write a generated customer file: ``customers_file(n, name="c.csv", invalid_every=0)``."""

    def make(n: int, name: str = "customers.csv", seed: int = 7, invalid_every: int = 0) -> Path:
        return write_file(tmp_path / name, n, seed, invalid_every)

    return make


def generated_rows(n: int, seed: int = 7, invalid_every: int = 0) -> list[list[str]]:
    return list(generate_rows(n, seed, invalid_every))


@pytest.fixture(autouse=True)
def _private_state_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The user's state directory (the default state's home) is the test's temp dir,
    so no test reads or writes the real one."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., Result]:
    """Invoke ``blueshift-import`` in-process; returns click's Result (exit_code, output)."""
    # A state per test (tests of the default location unset it).
    monkeypatch.setenv("BLUESHIFT_IMPORT_STATE", str(tmp_path / "state" / "state.sqlite"))
    monkeypatch.delenv("BLUESHIFT_API_KEY", raising=False)
    monkeypatch.delenv("BLUESHIFT_REGION", raising=False)
    monkeypatch.delenv("BLUESHIFT_BASE_URL", raising=False)

    def invoke(
        *args: str, env: dict[str, str] | None = None, input: str | bytes | None = None
    ) -> Result:
        runner = CliRunner()
        return runner.invoke(main, list(args), env=env, input=input, catch_exceptions=False)

    return invoke


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """An S3-compatible server (moto's server mode) on 127.0.0.1; yields its endpoint URL.

    Fake credentials are in the environment for the session, so no test can reach
    a real store with real ones.
    """
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as env:
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
            env.delenv(name, raising=False)
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        env.setenv("AWS_CONFIG_FILE", "/dev/null")
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
        server.stop()


@contextmanager
def serve_directory(root: Path, ssl_context: ssl.SSLContext | None = None) -> Iterator[int]:
    """Serve ``root`` (aiohttp, ranged requests too) on a free 127.0.0.1 port, over TLS with
    ``ssl_context``; yields the port."""
    from aiohttp import web

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    app = web.Application()
    app.router.add_static("/", root)
    runner = web.AppRunner(app)

    async def start() -> None:
        await runner.setup()
        await web.SockSite(runner, sock, ssl_context=ssl_context).start()

    asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        yield sock.getsockname()[1]
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A directory served over HTTP on 127.0.0.1: ``(directory, base URL)``."""
    root = tmp_path / "www"
    root.mkdir()
    with serve_directory(root) as port:
        yield root, f"http://127.0.0.1:{port}"
