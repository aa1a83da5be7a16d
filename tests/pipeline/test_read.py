import gzip
import json
import random

import pyarrow
import pyarrow.parquet
import pytest

from bertline.errors import UserError
from pipeline.read import plan_inputs, read_documents
from tests.conftest import write_bert_text


def _read_all(patterns, split_bytes=1 << 30, bad=None):
    ranges, _ = plan_inputs([str(p) for p in patterns], split_bytes)
    out = []
    for input_range in ranges:
        out.extend(read_documents(input_range, "utf-8", "text", "text", (bad.append if bad is not None else print)))
    return ranges, out


def _random_corpus(seed: int) -> list[list[str]]:
    draw = random.Random(seed)
    return [
        [" ".join(f"w{draw.randrange(1000)}" for _ in range(draw.randint(1, 30))) + "." for _ in range(draw.randint(1, 8))]
        for _ in range(draw.randint(5, 60))
    ]


@pytest.mark.parametrize("seed", range(12))
def test_byte_ranges_read_every_document_exactly_once(tmp_path, seed):
    docs = _random_corpus(seed)
    text = "\n\n".join("\n".join(d) for d in docs) + "\n"
    if seed % 3 == 1:
        text = text.replace("\n\n", "\n\n  \n\n")  # runs of blank and whitespace-only lines
    if seed % 3 == 2:
        text = text.replace("\n", "\r\n")
    path = tmp_path / "c.txt"
    path.write_bytes(text.encode())
    _, whole = _read_all([path])
    ranges, pieces = _read_all([path], split_bytes=random.Random(seed).randint(7, 200))
    assert len(ranges) > 1
    assert [d.lines for d in pieces] == [d.lines for d in whole] == docs
    assert len({d.key for d in pieces}) == len(pieces)


def test_crlf_bom_and_bad_utf8_are_handled(tmp_path):
    path = tmp_path / "x.txt"
    path.write_bytes(b"\xef\xbb\xbfFirst line.\r\nSecond \xff line.\r\n\r\nOther doc.\r\n")
    _, docs = _read_all([path])
    assert [d.lines for d in docs] == [["\ufeffFirst line.", "Second \ufffd line."], ["Other doc."]]


def test_jsonl_reads_the_field_and_reports_bad_lines(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(
        json.dumps({"text": "One. Two.\nThree."}) + "\n{not json}\n" + json.dumps({"body": "x"}) + "\n"
        + json.dumps({"text": 5}) + "\n" + json.dumps({"text": "Last one."}) + "\n"
    )
    bad = []
    _, docs = _read_all([path], bad=bad)
    assert [d.lines for d in docs] == [["One. Two.", "Three."], ["Last one."]]
    assert len(bad) == 3 and all(str(path) in message for message in bad)


def test_jsonl_byte_ranges_partition_lines(tmp_path):
    path = tmp_path / "b.jsonl"
    path.write_text("".join(json.dumps({"text": f"doc {i}."}) + "\n" for i in range(200)))
    _, whole = _read_all([path])
    _, pieces = _read_all([path], split_bytes=97)
    assert [d.lines for d in pieces] == [d.lines for d in whole] and len(whole) == 200


def test_gzip_and_parquet(tmp_path):
    with gzip.open(tmp_path / "a.txt.gz", "wt") as handle:
        handle.write("Gz one.\nGz two.\n\nGz doc two.\n")
    pyarrow.parquet.write_table(pyarrow.table({"text": ["P one.\nP two.", None, "P three."], "id": [1, 2, 3]}), tmp_path / "p.parquet")
    _, docs = _read_all([tmp_path / "*.gz", tmp_path / "*.parquet"])
    assert [d.lines for d in docs] == [["Gz one.", "Gz two."], ["Gz doc two."], ["P one.", "P two."], [], ["P three."]]


def test_truncated_gzip_names_the_file(tmp_path):
    data = gzip.compress(("A sentence that repeats. " * 4000).encode())
    path = tmp_path / "cut.txt.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"cut\.txt\.gz is truncated or corrupt"):
        _read_all([path])


def test_missing_parquet_column_names_file_and_columns(tmp_path):
    pyarrow.parquet.write_table(pyarrow.table({"body": ["x"]}), tmp_path / "p.parquet")
    with pytest.raises(UserError, match=r"p\.parquet has no column 'text' \(it has body\); set input.text_column"):
        _read_all([tmp_path / "p.parquet"])


def test_glob_matching_nothing_and_unknown_extension(tmp_path):
    with pytest.raises(UserError, match="matches no file"):
        plan_inputs([str(tmp_path / "*.txt")], 1 << 20)
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(UserError, match=r"data\.csv has an unsupported extension"):
        plan_inputs([str(tmp_path / "data.csv")], 1 << 20)


def test_unreadable_file_is_one_sentence(tmp_path):
    import os

    path = write_bert_text(tmp_path / "locked.txt", [["Some text."]])
    path.chmod(0)
    if os.access(path, os.R_OK):
        pytest.skip("running as root: permissions do not stop reads; the directory case below covers the message")
    with pytest.raises(UserError, match=r"cannot open input file .*locked\.txt"):
        _read_all([path])


def test_a_directory_named_like_a_file_is_one_sentence(tmp_path):
    from pipeline.read import InputRange

    (tmp_path / "dir.txt").mkdir()
    with pytest.raises(UserError, match=r"cannot open input file .*dir\.txt"):
        list(read_documents(InputRange(0, str(tmp_path / "dir.txt"), "txt", False, 0, None), "utf-8", "text", "text", print))


def test_a_file_without_blank_lines_is_cut_into_parts(tmp_path):
    lines = [f"Line number {i} of a file that never has a blank line." for i in range(2000)]
    path = tmp_path / "one.txt"
    path.write_text("\n".join(lines) + "\n")
    ranges, _ = plan_inputs([str(path)], 1 << 30)
    splits = []
    docs = list(read_documents(ranges[0], "utf-8", "text", "text", print, max_document_chars=10_000, on_split=lambda: splits.append(1)))
    assert [line for d in docs for line in d.lines] == lines
    assert all(sum(map(len, d.lines)) <= 10_000 for d in docs) and len(splits) == len(docs) - 1 > 5


def test_one_huge_line_is_skipped_in_pieces_by_later_ranges(tmp_path):
    path = tmp_path / "line.txt"
    path.write_bytes(b"Start doc.\n\n" + b"x" * 3_000_000 + b"\n\nLast doc.\n")
    _, whole = _read_all([path])
    _, pieces = _read_all([path], split_bytes=1 << 20)
    assert [d.lines for d in pieces] == [d.lines for d in whole]
    assert [len(d.lines[0]) for d in whole] == [10, 3_000_000, 9]


def test_parquet_binary_text_nulls_and_non_text_columns(tmp_path):
    pyarrow.parquet.write_table(pyarrow.table({"text": pyarrow.array([b"Bytes one.", None], pyarrow.binary())}), tmp_path / "b.parquet")
    _, docs = _read_all([tmp_path / "b.parquet"])
    assert [d.lines for d in docs] == [["Bytes one."], []]
    pyarrow.parquet.write_table(pyarrow.table({"text": [1, 2]}), tmp_path / "n.parquet")
    with pytest.raises(UserError, match=r"column 'text' of input file .*n\.parquet holds int64, not text"):
        _read_all([tmp_path / "n.parquet"])


@pytest.mark.parametrize("encoding,message", [("utf-16", "not ASCII-compatible"), ("klingon", "unknown text encoding")])
def test_unusable_encodings_are_refused_by_the_config(encoding, message):
    from bertline.config import load_config
    from pipeline.config import PrepareConfig

    with pytest.raises(UserError, match=message):
        load_config(PrepareConfig, None, {"input.encoding": encoding})
