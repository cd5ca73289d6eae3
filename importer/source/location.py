"""Where the input is: a local path, or a URL read through fsspec.

Owns: telling a URL from a path (``file://`` URLs are local paths), opening
either as a binary stream with its size and modification time, the package
each kind of URL needs, and the name a URL goes by in messages, reports and
the state: an HTTP(S) URL without user, password or query, which may hold
credentials (a presigned URL's signature). A URL is read in blocks of :data:`BLOCK_BYTES`
or, over HTTP(S), as one streamed answer: never downloaded whole.

Credentials come from each store's usual sources (environment, profile
files, instance roles), as its fsspec implementation finds them.

Must not: decompress, decode or parse what it opens (``reading`` does).
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit, urlunsplit

from ..errors import InputUnreadable, UsageError

#: The extra (``pip install 'blueshift-import[EXTRA]'``) each URL scheme needs; None: none.
URL_EXTRAS = {
    "s3": "s3",
    "gs": "gcs",
    "gcs": "gcs",
    "az": "azure",
    "abfs": "azure",
    "abfss": "azure",
    "http": None,
    "https": None,
}
#: Bytes a URL is read in, by ranged requests (the same block again for a resume's hash).
BLOCK_BYTES = 4 << 20
#: Seconds an HTTP server may send nothing while we wait for data (not while we pause).
HTTP_STALL_S = 300
_SCHEME = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*)://")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Where each store's fsspec ``info`` gives the last modification (s3fs, adlfs, gcsfs, HTTP).
_MODIFIED_KEYS = ("LastModified", "last_modified", "updated", "Last-Modified")


def url_scheme(path: str | Path) -> str | None:
    """The scheme of a URL in lower case (``s3``, ``https``…), or None for a local path."""
    match = _SCHEME.match(str(path))
    return match.group(1).lower() if match else None


def local_path(path: str | Path) -> str | Path:
    """``path`` itself, or for a ``file://`` URL the local path it names.

    Raises :class:`InputUnreadable` for a ``file://`` URL naming another machine.
    """
    if url_scheme(path) != "file":
        return path
    parts = urlsplit(str(path))
    if parts.netloc not in ("", "localhost"):
        raise InputUnreadable(f"{path}: a file:// URL must name a file on this machine")
    return unquote(parts.path)


def display_name(path: str | Path) -> str:
    """How the input is named in messages, reports, output files and the state.

    An HTTP(S) URL without user, password, query or fragment; anything else
    as given (in an object store's URL, ``?`` and ``@`` belong to the name).
    """
    if url_scheme(path) not in ("http", "https"):
        return str(path)
    parts = urlsplit(str(path))
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def open_input(
    path: str | Path, storage_options: dict[str, Any] | None = None, *, seekable: bool = False
) -> tuple[IO[bytes], int | None, int | None]:
    """Open a local path or a URL for reading bytes: ``(stream, size, mtime_ns)``.

    ``storage_options`` go to the URL's fsspec filesystem (``endpoint_url``…).
    Over HTTP(S) the stream is one GET unless ``seekable`` (Parquet) asks for
    ranged requests; an object store is always read in ranged blocks. Size and
    modification time are None where the store does not say.

    Raises :class:`InputUnreadable` when the input is missing, a directory or
    cannot be opened, or its scheme is unsupported or needs an extra that is
    not installed; :class:`UsageError` when the store refuses the storage options.
    """
    scheme = url_scheme(path)
    if scheme is None:
        return _open_local(path)
    name = display_name(path)
    if scheme not in URL_EXTRAS:
        raise InputUnreadable(
            f"{name}: unsupported URL scheme {scheme}:// "
            "(use s3://, gs://, az://, https://, http:// or file://)"
        )
    fs = filesystem(scheme, storage_options or {})
    try:
        info = fs.info(str(path))
        if info.get("type") == "directory":
            raise InputUnreadable(f"{name}: is a directory, not a file")
        stream = fs.open(str(path), "rb", block_size=_block_size(scheme, seekable))
    except InputUnreadable:
        raise
    except FileNotFoundError as exc:
        raise InputUnreadable(f"{name}: {not_found(exc)}") from exc
    except PermissionError as exc:
        raise InputUnreadable(f"{name}: access denied ({scrub(str(exc))})") from exc
    except Exception as exc:  # each store raises its own types: this is the boundary
        raise InputUnreadable(f"{name}: cannot open ({describe_error(exc)})") from exc
    return stream, info.get("size"), _modified_ns(info)


def not_found(exc: FileNotFoundError, what: str = "file") -> str:
    """``no such file``, or what really failed when a store says "not found" for any
    failure (fsspec's HTTP filesystem does, for a refused certificate too)."""
    cause = exc.__cause__
    # A connection or TLS failure is an OSError; an HTTP answer other than 404 has a status.
    if cause is None or (
        not isinstance(cause, OSError) and getattr(cause, "status", None) in (None, 404)
    ):
        return f"no such {what}"
    return f"cannot open ({describe_error(cause)})"


def describe_error(exc: BaseException) -> str:
    """An exception's type and message, with any URL's query (a signature) left out."""
    return f"{type(exc).__name__}: {scrub(str(exc))}" if str(exc) else type(exc).__name__


def scrub(text: str) -> str:
    """``text`` with the query of each URL in it cut, and at most 300 characters long."""
    text = re.sub(r"(://[^\s'\"?]*)\?[^\s'\"]*", r"\1", text)
    return text if len(text) <= 300 else text[:300] + "…"


def _open_local(path: str | Path) -> tuple[IO[bytes], int, int]:
    if Path(path).is_dir():
        raise InputUnreadable(f"{path}: is a directory, not a file")
    try:
        file = open(path, "rb")  # noqa: SIM115 - the caller closes it
    except FileNotFoundError as exc:
        raise InputUnreadable(f"{path}: no such file") from exc
    except PermissionError as exc:
        raise InputUnreadable(f"{path}: permission denied") from exc
    except OSError as exc:
        raise InputUnreadable(f"{path}: cannot open ({exc.strerror or exc})") from exc
    st = os.fstat(file.fileno())
    return file, st.st_size, st.st_mtime_ns


def filesystem(scheme: str, storage_options: dict[str, Any]) -> Any:
    """The fsspec filesystem for ``scheme``; raises as :func:`open_input` says."""
    import fsspec

    if scheme in ("http", "https") and "client_kwargs" not in storage_options:
        import aiohttp

        # aiohttp gives a whole answer 5 minutes by default, but a file streamed at the
        # API's pace takes as long as the import: only a stalled peer times out.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=HTTP_STALL_S)
        storage_options = {**storage_options, "client_kwargs": {"timeout": timeout}}
    try:
        return fsspec.filesystem(scheme, **storage_options)
    except ImportError as exc:
        extra = URL_EXTRAS[scheme]
        if extra is None:  # HTTP needs only aiohttp, a dependency of the package itself
            raise InputUnreadable(f"cannot read {scheme}:// URLs ({exc})") from exc
        raise InputUnreadable(
            f"reading {scheme}:// URLs needs the {extra} extra: "
            f"pip install 'blueshift-import[{extra}]'"
        ) from exc
    except (TypeError, ValueError) as exc:
        message = f"storage_options refused by {scheme}://: {scrub(str(exc))}"
        raise UsageError(message, "storage_options") from exc


def _block_size(scheme: str, seekable: bool) -> int:
    # 0 makes fsspec's HTTP filesystem stream one answer, which every server can give;
    # ranged requests (for Parquet's random access) need a server that supports them.
    return 0 if scheme in ("http", "https") and not seekable else BLOCK_BYTES


def _modified_ns(info: dict[str, Any]) -> int | None:
    """The object's last modification in nanoseconds since the epoch, if its store says."""
    for key in _MODIFIED_KEYS:
        value = info.get(key)
        if isinstance(value, str):
            text = value
            try:
                value = datetime.fromisoformat(text)
            except ValueError:
                try:
                    value = parsedate_to_datetime(text)  # an HTTP date
                except (TypeError, ValueError):
                    continue
        if isinstance(value, datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=UTC)
            delta = value - _EPOCH
            return (delta.days * 86_400 + delta.seconds) * 10**9 + delta.microseconds * 1_000
    return None
