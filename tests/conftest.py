"""Shared fixtures: the fake API on a loopback port chosen by the OS, a real Redis server,
data builders, the CLI."""

from __future__ import annotations

import csv
import io
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner, Result

from benchmarks.datagen import HEADER, generate_rows, write_file
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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A real ``redis-server`` on a free loopback port, saving nothing to disk.

    ``make test`` installs it where it is missing; without it the tests that
    need it fail, never skip.
    """

    def __init__(self, workdir: Path):
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server is not on PATH: `make test` installs it (apt-get)")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        command = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        command += ["--appendonly", "no", "--dir", str(workdir)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.client = redis.Redis(port=self.port, socket_timeout=2)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                return
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"redis-server did not start on port {self.port}")
                time.sleep(0.02)

    def stop(self) -> None:
        """Stop the server (as an outage would: at once, mid-run if need be)."""
        self.client.close()
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        if self.process.stderr is not None:
            self.process.stderr.close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One Redis server for the whole session; tests keep apart by their keys."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def make_redis(tmp_path: Path) -> Iterator[Callable[[], RedisServer]]:
    """Start Redis servers of a test's own (to stop mid-run); all are stopped afterwards."""
    servers: list[RedisServer] = []

    def start() -> RedisServer:
        servers.append(RedisServer(tmp_path))
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
