"""Shared fixtures: the fake API on a loopback port chosen by the OS, a real Redis server
on a free one, data builders, the CLI."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from benchmarks.datagen import HEADER, generate_rows, write_file
from benchmarks.redis_server import RedisServer
from importer.cli import main
from importer.fake_api import DEFAULT_KEY, FakeApiConfig, FakeApiServer
from importer.options import ImportOptions

API_KEY = DEFAULT_KEY


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


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., Result]:
    """Invoke ``blueshift-import`` in-process; returns click's Result (exit_code, output)."""
    # The default state lives in the working directory: keep it in the test's temp dir.
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
