"""The options of one import run, validated once, shared read-only by every stage."""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from .errors import UsageError

#: Blueshift's hard limit of customers per bulk call; more is answered with 413.
MAX_BATCH_SIZE = 50

REGION_URLS = {
    "us": "https://api.getblueshift.com",
    "eu": "https://api.eu.getblueshift.com",
}

FORMATS = ("csv", "jsonl")
ON_INVALID = ("skip-row", "drop-field", "stop")


@dataclass(frozen=True)
class ImportOptions:
    """Everything that decides how a file is imported.

    Defaults follow Blueshift's recommendations (5 calls per second, 50
    customers per call). Invalid values raise :class:`UsageError` on creation.
    """

    api_key: str | None = field(default=None, repr=False)
    region: str = "us"
    base_url: str | None = None
    insecure_http: bool = False

    rate: float = 5.0
    concurrency: int = 4
    batch_size: int = MAX_BATCH_SIZE
    max_batch_bytes: int = 1_000_000
    timeout: float = 30.0
    max_retries: int = 8
    max_backoff: float = 60.0
    backoff_base: float = 0.5
    give_up_after: float = 300.0

    format: str | None = None
    encoding: str | None = None
    delimiter: str | None = None
    chunk_rows: int = 20_000
    max_field_bytes: int = 1_000_000
    max_columns: int = 1_000
    max_json_depth: int = 32
    max_line_bytes: int = 4_000_000

    column_map: tuple[tuple[str, str], ...] = ()
    drop_columns: tuple[str, ...] = ()
    drop_unmapped: bool = False
    mapping_file: Path | None = None
    phone_region: str = "US"
    on_invalid: str = "skip-row"
    empty_as_null: bool = False

    # -- state: resume and incremental imports --
    #: The SQLite state store; None records nothing (and allows no resume).
    state_path: Path | None = None
    #: Continue the interrupted run of the same input, skipping rows already done.
    resume: bool = False
    #: With ``resume``: start over even when the input or the options changed.
    force: bool = False
    #: Skip customers whose payload equals the last one the API confirmed.
    changed_only: bool = False

    # -- outputs --
    report_path: Path | None = None
    dead_letter_path: Path | None = None
    rejects_path: Path | None = None
    overwrite: bool = False
    dry_run: bool = False
    #: How many payloads a dry run (``validate``, ``run --dry-run``) keeps to show.
    preview_size: int = 5
    max_error_rate: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise UsageError(
                f"--batch-size must be between 1 and {MAX_BATCH_SIZE} "
                f"(Blueshift accepts at most {MAX_BATCH_SIZE} customers per call), "
                f"got {self.batch_size}"
            )
        if not self.rate > 0:
            raise UsageError(f"--rate must be above 0 requests per second, got {self.rate}")
        if self.concurrency < 1:
            raise UsageError(f"--concurrency must be at least 1, got {self.concurrency}")
        if self.region not in REGION_URLS:
            raise UsageError(
                f"--region must be one of {', '.join(REGION_URLS)}, got {self.region!r}"
            )
        if self.format is not None and self.format not in FORMATS:
            raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if self.on_invalid not in ON_INVALID:
            raise UsageError(
                f"--on-invalid must be one of {', '.join(ON_INVALID)}, got {self.on_invalid!r}"
            )
        for name in ("timeout", "max_backoff", "give_up_after"):
            if not getattr(self, name) > 0:
                raise UsageError(f"--{name.replace('_', '-')} must be above 0")
        if self.max_retries < 0:
            raise UsageError("--max-retries must be 0 or more")
        if self.backoff_base < 0:
            raise UsageError("the backoff base must be 0 or more seconds")
        if not 0 <= self.max_error_rate <= 1:
            raise UsageError(f"--max-error-rate must be between 0 and 1, got {self.max_error_rate}")
        if self.chunk_rows < 1:
            raise UsageError("the chunk size must be at least 1 row")
        for name in ("max_field_bytes", "max_columns", "max_json_depth", "max_line_bytes"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
        if self.preview_size < 0:
            raise UsageError(f"--show must be 0 or more, got {self.preview_size}")
        if self.delimiter is not None and len(self.delimiter) != 1:
            raise UsageError(f"--delimiter must be one character, got {self.delimiter!r}")
        if (self.resume or self.changed_only) and self.state_path is None and not self.dry_run:
            raise UsageError("--resume and --changed-only need a state store (--state PATH)")
        if self.force and not self.resume:
            raise UsageError("--force only goes with --resume (to start an interrupted run over)")
        if self.resume and self.overwrite and not self.force:
            raise UsageError(
                "--resume appends to the output files; drop --overwrite "
                "(or pass --resume --force to start over)"
            )
        check_base_url(self.resolved_base_url, self.insecure_http)

    @property
    def resolved_base_url(self) -> str:
        """The API's base URL: ``base_url`` if given, else the region's."""
        return (self.base_url or REGION_URLS[self.region]).rstrip("/")

    def replace(self, **changes: object) -> ImportOptions:
        """A copy with some options changed (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def check_base_url(url: str, insecure_http: bool) -> None:
    """Refuse URLs that would send the API key in clear text to another machine.

    Plain ``http://`` is allowed for loopback addresses (the fake API) and,
    with ``insecure_http``, anywhere.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--base-url must be an http(s) URL with a host, got {url!r}")
    if parts.scheme == "http" and not insecure_http and not is_loopback(parts.hostname):
        raise UsageError(
            f"refusing plain http:// to {parts.hostname}: the API key would travel unencrypted "
            "(use https://, or --insecure-http if you really mean it)"
        )


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and addresses in 127.0.0.0/8 or ``::1``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
