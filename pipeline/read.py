"""Files → documents. Input is planned on the driver (globs matched, big files cut into byte ranges) and
read in a DoFn, one range at a time, streaming: no step holds a whole file's text.

Formats by extension: .txt (BERT format: one sentence or paragraph per line, a blank line between
documents), .jsonl (one JSON object per line, the text in a configurable field), .parquet (one row per
document, a configurable column); .gz on any of them. Every path goes through Beam's FileSystems, so
gs://, s3:// and hdfs:// globs work where the matching Beam extras are installed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import json
import os
import zlib
from typing import Iterator

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from bertline.errors import UserError

FORMATS = {".txt": "txt", ".text": "txt", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


@dataclasses.dataclass(frozen=True)
class InputRange:
    """Bytes [start, end) of one input file; end is None for 'to the end' (compressed or unsplittable)."""

    file_index: int
    path: str
    format: str
    compressed: bool
    start: int
    end: int | None


@dataclasses.dataclass(frozen=True)
class Document:
    """A document's stable key (file index and byte offset or row), and its raw lines."""

    key: str
    lines: list[str]


def input_format(path: str) -> tuple[str, bool]:
    """(format, gzip-compressed) from a path's extension, or a UserError naming the file."""
    name = path.lower()
    compressed = name.endswith(".gz")
    if compressed:
        name = name[:-3]
    for suffix, fmt in FORMATS.items():
        if name.endswith(suffix):
            return fmt, compressed
    raise UserError(f"input file {path} has an unsupported extension; bertline reads .txt, .jsonl and .parquet files, optionally .gz")


def plan_inputs(patterns: list[str], split_bytes: int) -> tuple[list[InputRange], list[dict]]:
    """Match every glob (each must match something), sort the files, and cut large plain files into ranges.

    Returns the ranges and a description of each file (path, bytes) for the manifest.
    """
    files: dict[str, int] = {}
    for pattern in patterns:
        if "://" not in pattern and os.path.isdir(pattern):
            raise UserError(f"input {pattern!r} is a folder; give a glob of its files, e.g. --input '{pattern.rstrip('/')}/*.txt'")
        try:
            matched = FileSystems.match([pattern])[0].metadata_list
        except Exception as exc:  # Beam raises BeamIOError/ValueError for unknown schemes and bad paths
            raise UserError(f"cannot list input {pattern!r} ({exc.__class__.__name__}: {exc}); check the path or glob") from None
        matched = [m for m in matched if not m.path.endswith("/")]
        if not matched:
            raise UserError(f"input glob {pattern!r} matches no file; check the path (globs are expanded by bertline, quote them in the shell)")
        for metadata in matched:
            files[metadata.path] = metadata.size_in_bytes
    ranges: list[InputRange] = []
    described = []
    for file_index, path in enumerate(sorted(files)):
        size = files[path]
        fmt, compressed = input_format(path)
        described.append({"path": path, "bytes": size})
        if fmt == "parquet" or compressed or size <= split_bytes:
            ranges.append(InputRange(file_index, path, fmt, compressed, 0, None))
            continue
        for start in range(0, size, split_bytes):
            end = start + split_bytes
            ranges.append(InputRange(file_index, path, fmt, compressed, start, end if end < size else None))
    return ranges, described


def _open(input_range: InputRange):
    try:
        raw = FileSystems.open(input_range.path, compression_type=CompressionTypes.UNCOMPRESSED)
    except Exception as exc:
        raise UserError(f"cannot open input file {input_range.path} ({exc.__class__.__name__}: {exc}); check that it exists and is readable") from None
    return raw


def _lines(input_range: InputRange, stream) -> Iterator[tuple[int, bytes]]:
    """(start offset, raw line) for every line whose first byte lies at or after the range start."""
    offset = 0
    if input_range.start > 0:
        stream.seek(input_range.start - 1)
        # The rest of the line holding byte start-1 belongs to the previous range; skip it in bounded
        # pieces so a huge line costs no memory here.
        offset = input_range.start - 1
        while True:
            piece = stream.readline(1 << 20)
            offset += len(piece)
            if not piece or piece.endswith(b"\n"):
                break
    try:
        for raw in iter(stream.readline, b""):
            yield offset, raw
            offset += len(raw)
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as exc:
        raise UserError(
            f"input file {input_range.path} is truncated or corrupt after byte {offset} of its decompressed text "
            f"({exc.__class__.__name__}: {exc}); re-create it or remove it from --input"
        ) from None


def _decode(raw: bytes, encoding: str) -> str:
    return raw.decode(encoding, errors="replace").rstrip("\r\n")


_BOMS = {b"\xff\xfe\x00\x00": "UTF-32", b"\x00\x00\xfe\xff": "UTF-32", b"\xff\xfe": "UTF-16", b"\xfe\xff": "UTF-16"}


class TextCheck:
    """Stops on input that is not text in the configured encoding, naming the file, instead of turning it into
    garbage samples: a UTF-16/32 byte-order mark at the start of a file, or, in the first CHECKED characters of
    any range, more than MAX_BAD of them NUL or undecodable (binary files; UTF-16 without a mark: every other
    byte NUL). Real text with a few bad bytes stays far below (they become U+FFFD and are counted)."""

    CHECKED = 1 << 16
    MAX_BAD = 0.01

    def __init__(self, input_range: InputRange):
        self.path, self.seen, self.bad = input_range.path, 0, 0
        self.first = input_range.start == 0

    def __call__(self, raw: bytes, text: str) -> None:
        if self.first:
            self.first = False
            for bom, name in _BOMS.items():
                if raw.startswith(bom):
                    raise UserError(f"input file {self.path} is {name} text (it starts with a {name} byte-order mark); convert it "
                                    f"to UTF-8 (iconv -f {name} -t UTF-8) or remove it from --input")
        if self.seen >= self.CHECKED:
            return
        self.seen += len(text)
        self.bad += text.count("\x00") + text.count("\ufffd")
        if self.seen >= min(self.CHECKED, 256) and self.bad > self.MAX_BAD * self.seen:
            raise UserError(
                f"input file {self.path} does not look like text: {self.bad} of its first {self.seen} characters are NUL bytes "
                f"or not valid in the input encoding (a binary file, or UTF-16 without a byte-order mark); remove it from "
                f"--input or convert it to UTF-8 text"
            )


def _txt_documents(input_range: InputRange, stream, encoding: str, max_chars: int, on_split) -> Iterator[Document]:
    """Documents of a BERT-format text range.

    Ownership rule between ranges: a document belongs to the range holding the start of the blank line
    just before it (the file's first document to the range at 0). A range therefore skips lines until its
    first blank line, and stops at the first blank line at or past its end; no document is read twice or lost.
    A document that grows past `max_chars` is handed on in parts, each keyed by its first line's offset,
    so a file without blank lines never sits in memory whole.
    """
    end = input_range.end
    owned = input_range.start == 0
    lines: list[str] = []
    chars = 0
    first_offset = 0
    check = TextCheck(input_range)
    for offset, raw in _lines(input_range, stream):
        text = _decode(raw, encoding)
        check(raw, text)
        if not text.strip():
            if lines:
                yield Document(f"{input_range.file_index}:{first_offset}", lines)
                lines, chars = [], 0
            if end is not None and offset >= end:
                return
            owned = True
            continue
        if owned:
            if lines and chars + len(text) > max_chars:
                on_split()
                yield Document(f"{input_range.file_index}:{first_offset}", lines)
                lines, chars = [], 0
            if not lines:
                first_offset = offset
            lines.append(text)
            chars += len(text)
    if lines:
        yield Document(f"{input_range.file_index}:{first_offset}", lines)


def _jsonl_documents(input_range: InputRange, stream, encoding: str, field: str, on_bad_line) -> Iterator[Document]:
    """One document per JSON line whose first byte lies in the range; bad lines are reported and skipped."""
    end = input_range.end
    check = TextCheck(input_range)
    for offset, raw in _lines(input_range, stream):
        if end is not None and offset >= end:
            return
        text = _decode(raw, encoding)
        check(raw, text)
        if not text.strip():
            continue
        try:
            value = json.loads(text)[field]
        except (ValueError, TypeError, KeyError):
            on_bad_line(f"{input_range.path} at byte {offset}: not a JSON object with a string field {field!r}")
            continue
        if not isinstance(value, str):
            on_bad_line(f"{input_range.path} at byte {offset}: field {field!r} is {type(value).__name__}, not a string")
            continue
        yield Document(f"{input_range.file_index}:{offset}", value.split("\n"))


def _parquet_documents(input_range: InputRange, stream, column: str, encoding: str) -> Iterator[Document]:
    """One document per row; null rows become empty documents (counted), binary text is decoded."""
    import pyarrow
    import pyarrow.parquet

    try:
        parquet = pyarrow.parquet.ParquetFile(stream)
    except (pyarrow.ArrowException, OSError) as exc:
        raise UserError(f"input file {input_range.path} is not a readable Parquet file ({exc}); re-create it or remove it from --input") from None
    schema = parquet.schema_arrow
    if column not in schema.names:
        raise UserError(
            f"input file {input_range.path} has no column {column!r} (it has {', '.join(schema.names)}); "
            f"set input.text_column"
        )
    kind = schema.field(column).type
    is_text = pyarrow.types.is_string(kind) or pyarrow.types.is_large_string(kind)
    is_binary = pyarrow.types.is_binary(kind) or pyarrow.types.is_large_binary(kind)
    if not (is_text or is_binary):
        raise UserError(
            f"column {column!r} of input file {input_range.path} holds {kind}, not text; "
            f"set input.text_column to a string column"
        )
    row = 0
    for batch in parquet.iter_batches(columns=[column], batch_size=1024):
        for value in batch.column(0).to_pylist():
            if isinstance(value, bytes):
                value = value.decode(encoding, errors="replace")
            yield Document(f"{input_range.file_index}:{row}", value.split("\n") if value is not None else [])
            row += 1


def _parts(documents: Iterator[Document], max_chars: int, on_split) -> Iterator[Document]:
    """Cut documents longer than max_chars into parts at line boundaries (JSON and Parquet documents
    arrive whole; this bounds what later steps hold)."""
    for document in documents:
        if sum(len(line) for line in document.lines) <= max_chars:
            yield document
            continue
        part: list[str] = []
        chars, index = 0, 0
        for line in document.lines:
            if part and chars + len(line) > max_chars:
                on_split()
                yield Document(f"{document.key}+{index}", part)
                part, chars, index = [], 0, index + 1
            part.append(line)
            chars += len(line)
        yield Document(f"{document.key}+{index}", part)


def read_documents(
    input_range: InputRange, encoding: str, text_field: str, text_column: str, on_bad_line,
    max_document_chars: int = 1 << 24, on_split=lambda: None,
) -> Iterator[Document]:
    """Every document of one range, streamed. `on_bad_line(message)` is told of each skipped JSON line and
    `on_split()` of each document cut at max_document_chars."""
    with _open(input_range) as raw, (
        # Python's gzip raises EOFError on a truncated stream; Beam's own decompressor ends quietly instead.
        gzip.GzipFile(fileobj=raw, mode="rb") if input_range.compressed else contextlib.nullcontext(raw)
    ) as stream:
        if input_range.format == "txt":
            yield from _txt_documents(input_range, stream, encoding, max_document_chars, on_split)
        elif input_range.format == "jsonl":
            yield from _parts(_jsonl_documents(input_range, stream, encoding, text_field, on_bad_line), max_document_chars, on_split)
        else:
            yield from _parts(_parquet_documents(input_range, stream, text_column, encoding), max_document_chars, on_split)
