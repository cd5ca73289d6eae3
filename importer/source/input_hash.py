"""The SHA-256 checkpoint of the input's first bytes, which lets an interrupted run resume.

Owns: hashing the input through a handle of its own (a URL is opened again,
through the same store and options), and checking an earlier run's
checkpoint. Must not: parse the input or record anything (the state does).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ..errors import InputChanged
from .location import open_input

#: Bytes read at a time when hashing the input.
HASH_BLOCK = 1 << 20


class InputHasher:
    """SHA-256 of the input's first bytes, advanced just behind the source (producer thread).

    ``verify`` is the ``(bytes, hexdigest)`` checkpoint of an interrupted run:
    crossing it compares the hashes and raises :class:`InputChanged` on a
    mismatch; :attr:`verified` says whether it has been passed. ``storage_options``
    are those of a URL's store; opening raises as
    :func:`~importer.source.location.open_input` does.
    """

    def __init__(
        self,
        path: str | Path,
        verify: tuple[int, str | None] | None = None,
        storage_options: dict[str, Any] | None = None,
    ):
        self._file = open_input(path, storage_options)[0]
        self._hash = hashlib.sha256()
        self.position = 0
        self._verify = verify if verify and verify[0] > 0 and verify[1] else None
        self.verified = self._verify is None

    def close(self) -> None:
        self._file.close()

    def advance(self, upto: int) -> tuple[int, str]:
        """Hash the file up to byte ``upto``; return the checkpoint ``(bytes, hexdigest)``.

        Raises :class:`InputChanged` when this crosses the checkpoint to verify
        and the bytes up to it hash differently.
        """
        if self._verify is not None and not self.verified and upto >= self._verify[0]:
            self._read_to(self._verify[0])
            if self.position != self._verify[0] or self._hash.hexdigest() != self._verify[1]:
                raise InputChanged(
                    "the input's content changed since the interrupted run (its first "
                    f"{self._verify[0]} bytes hash differently); refusing to resume. "
                    "Pass --resume --force to start over."
                )
            self.verified = True
        self._read_to(upto)
        return self.position, self._hash.hexdigest()

    def finish(self) -> tuple[int, str]:
        """Hash to the end of the file: the whole content's checkpoint."""
        return self.advance(1 << 62)

    def _read_to(self, upto: int) -> None:
        while self.position < upto:
            block = self._file.read(min(HASH_BLOCK, upto - self.position))
            if not block:
                return
            self._hash.update(block)
            self.position += len(block)
