"""A real ``redis-server`` on a free loopback port, for the tests and the pace benchmark.

Saves nothing to disk (``--save '' --appendonly no``); ``make test`` installs
the server where it is missing.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """``redis-server`` started on a free port of 127.0.0.1; ``url`` names it, ``stop()``
    ends it (as an outage would: at once, mid-run if need be).

    Raises RuntimeError when the server is not installed or does not start.
    """

    def __init__(self, workdir: Path):
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not on PATH: `make test` installs it (apt-get)")
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
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.02)

    def stop(self) -> None:
        """Stop the server now."""
        self.client.close()
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        if self.process.stderr is not None:
            self.process.stderr.close()
