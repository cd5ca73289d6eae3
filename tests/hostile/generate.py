"""Write a corpus of hostile input files, one per case in :data:`CASES`.

Usage: ``python -m tests.hostile.generate DIR`` (or import :func:`generate`).
Each case names the file it writes and the exit code ``blueshift-import run``
is documented to give for it: 0 every row delivered, 1 rows rejected, 2 the
file is refused with a one-line message.
"""

from __future__ import annotations

import codecs
import gzip
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HEADER = "email,customer_id,First Name,City\n"
GOOD = "".join(f"user{i}@example.com,C{i:05d},Ann,Oslo\n" for i in range(20))


@dataclass(frozen=True)
class Case:
    name: str
    file: str
    exit_code: int | tuple[int, ...]
    write: Callable[[Path], None]
    #: Extra command-line options the case needs (e.g. an encoding).
    options: tuple[str, ...] = ()


def _text(data: str | bytes) -> Callable[[Path], None]:
    raw = data.encode() if isinstance(data, str) else data
    return lambda path: path.write_bytes(raw)


def _garbage(path: Path) -> None:
    path.write_bytes(random.Random(8).randbytes(200_000))


def _truncated_gzip(path: Path) -> None:
    body = HEADER + "".join(f"u{i}@example.com,C{i},Ann,Oslo\n" for i in range(5_000))
    data = gzip.compress(body.encode())
    path.write_bytes(data[: len(data) // 2])


def _big_field(path: Path) -> None:
    with path.open("wb") as f:
        f.write(HEADER.encode())
        f.write(b"big@example.com,C1,")
        block = b"x" * (1 << 20)
        for _ in range(20):
            f.write(block)
        f.write(b",Oslo\n")
        f.write(GOOD.encode())


def _wide(path: Path) -> None:
    header = "email," + ",".join(f"col{i}" for i in range(10_000)) + "\n"
    path.write_text(header + "a@example.com," + ",".join("v" for _ in range(10_000)) + "\n")


def _wide_jsonl(path: Path) -> None:
    wide = "{" + ",".join(f'"k{i}": {i}' for i in range(10_000)) + ', "email": "w@example.com"}'
    path.write_text('{"email": "a@example.com"}\n' + wide + "\n")


def _deep_jsonl(path: Path) -> None:
    lines = [
        '{"email": "a@example.com"}',
        '{"email": "b@example.com", "x": ' + "[" * 50 + "]" * 50 + "}",
        '{"email": "c@example.com", "x": ' + '{"a": ' * 5000 + "1" + "}" * 5000 + "}",
        '{"email": "d@example.com", "x": ' + "[" * 200_000 + "]" * 200_000 + "}",
        '{"email": "e@example.com"}',
    ]
    path.write_text("\n".join(lines) + "\n")


def _mkdir(path: Path) -> None:
    path.mkdir(exist_ok=True)


CASES: tuple[Case, ...] = (
    Case("empty csv", "empty.csv", 2, _text(b"")),
    Case("empty jsonl", "empty.jsonl", 0, _text(b"")),
    Case("blank lines only", "blank.csv", 2, _text("\n\r\n  \n")),
    Case("header only", "header_only.csv", 0, _text(HEADER)),
    Case("binary garbage", "garbage.csv", 2, _garbage),
    Case("binary garbage as jsonl", "garbage.jsonl", 2, _garbage),
    Case("truncated gzip", "truncated.csv.gz", 2, _truncated_gzip),
    Case("gzip with a csv name but not gzip inside", "fake.csv.gz", 0, _text(HEADER + GOOD)),
    Case(
        "cp1252 text without a declaration",
        "cp1252.csv",
        0,
        _text((HEADER + "zoe@example.com,C9,Zoë €uro,Köln\n").encode("cp1252")),
    ),
    Case(
        "utf-16 without a BOM",
        "utf16_nobom.csv",
        2,
        _text((HEADER + GOOD).encode("utf-16-le")),
    ),
    Case(
        "utf-16 with a BOM",
        "utf16_bom.csv",
        0,
        _text(codecs.BOM_UTF16_LE + (HEADER + GOOD).encode("utf-16-le")),
    ),
    Case(
        "declared utf-8 but latin-1 inside",
        "latin1_declared_utf8.csv",
        2,
        _text((HEADER + "zoe@example.com,C9,Zoë,Köln\n").encode("latin-1")),
        ("--encoding", "utf-8"),
    ),
    Case(
        "NUL bytes in cells",
        "nul.csv",
        0,
        _text(HEADER + "nul@example.com,C1,A\x00nn,Os\x00lo\n" + GOOD),
    ),
    Case("a 20 MB field", "big_field.csv", 1, _big_field),
    Case("10,000 columns", "wide.csv", 2, _wide),
    Case("10,000 keys in one JSONL record", "wide.jsonl", 1, _wide_jsonl),
    Case("deeply nested JSON", "deep.jsonl", 1, _deep_jsonl),
    Case(
        "JSON arrays instead of objects",
        "arrays.jsonl",
        1,
        _text('["a@example.com", "C1"]\n{"email": "b@example.com"}\n[]\n'),
    ),
    Case(
        "one JSON array document",
        "array_document.jsonl",
        1,
        _text('[\n  {"email": "a@example.com"},\n  {"email": "b@example.com"}\n]\n'),
    ),
    Case(
        "invalid JSON lines",
        "broken.jsonl",
        1,
        _text('{"email": "a@example.com"}\n{"email": \n{"email": "c@example.com"}\nnull\n'),
    ),
    Case(
        "formula injection values",
        "formulas.csv",
        1,
        _text(
            HEADER
            + 'f1@example.com,C1,=HYPERLINK("http://evil"),+1\n'
            + "f2@example.com,C2,@SUM(A1:A9),-1\n"
            + '=cmd|" /C calc"!A0,,\n'
            + "+ragged,row,with,too,many\n"
        ),
    ),
    Case(
        "emoji and IDN emails",
        "emoji_idn.csv",
        (0, 1),
        _text(
            HEADER
            + "josé@bücher.example,C1,Zoë 😀,Zürich\n"
            + "用户@例子.广告,C2,李,北京\n"
            + "plain@xn--bcher-kva.example,C3,🎉🎉,Köln\n"
        ),
    ),
    Case(
        "ragged rows and an unterminated quote",
        "ragged.csv",
        1,
        _text(HEADER + "a@example.com,C1,Ann\n" + 'b@example.com,C2,"Bob,Oslo\n' + GOOD),
    ),
    Case("duplicate headers", "dup_header.csv", 2, _text("email,email\na@x.io,b@x.io\n")),
    Case("a directory instead of a file", "directory.csv", 2, _mkdir),
    Case("no such file", "missing.csv", 2, lambda path: None),
)


def generate(dest: Path) -> list[tuple[Case, Path]]:
    """Write every case's file under ``dest``; returns ``(case, path)`` pairs."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for case in CASES:
        path = dest / case.file
        case.write(path)
        out.append((case, path))
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.hostile.generate DIR")
    for case, path in generate(Path(sys.argv[1])):
        print(f"{path}  ({case.name}; expected exit {case.exit_code})")
