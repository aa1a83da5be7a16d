"""Every user mistake ends in a counted skip or one sentence naming the thing and the fix (exit code 2)."""

import gzip
import json
from pathlib import Path

import pytest

from tests.pipeline.shards import prepare

pytestmark = pytest.mark.slow
# Tiny corpora train tiny vocabularies: without byte fallback, whose 256 byte pieces would not fit.
SMALL = ["--pairs.dupe_factor", "1", "--output.num_shards", "2", "--output.validation_fraction", "0",
         "--tokenizer.vocab_size", "300", "--tokenizer.byte_fallback", "false"]


def _one_sentence(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("bertline prepare: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def _corpus(tmp_path: Path, name="ok.txt", docs=30) -> Path:
    from pipeline.__main__ import default_corpus

    text = Path(default_corpus()).read_text(encoding="utf-8").split("\n\n")[:docs]
    path = tmp_path / name
    path.write_text("\n\n".join(text) + "\n", encoding="utf-8")
    return path


def test_glob_that_matches_nothing(tmp_path, capsys):
    code, _, err = prepare(capsys, "--input", tmp_path / "nothing-*.txt", "--output", tmp_path / "out")
    assert code == 2 and "matches no file" in _one_sentence(err) and "nothing-*.txt" in err


def test_truncated_gzip_inside_the_job_names_the_file(tmp_path, capsys):
    data = gzip.compress(_corpus(tmp_path).read_bytes())
    (tmp_path / "cut.txt.gz").write_bytes(data[: len(data) // 2])
    code, _, err = prepare(capsys, "--input", tmp_path / "cut.txt.gz", "--output", tmp_path / "out", *SMALL)
    assert code == 2 and "cut.txt.gz is truncated or corrupt" in _one_sentence(err)
    assert not (tmp_path / "out" / "COMPLETED").exists()


def test_missing_parquet_column_inside_the_job(tmp_path, capsys):
    import pyarrow
    import pyarrow.parquet

    pyarrow.parquet.write_table(pyarrow.table({"body": ["Some text. More text."]}), tmp_path / "p.parquet")
    code, _, err = prepare(capsys, "--input", tmp_path / "p.parquet", "--output", tmp_path / "out", *SMALL)
    assert code == 2 and "has no column 'text' (it has body); set input.text_column" in _one_sentence(err)


def test_malformed_jsonl_lines_are_counted_and_skipped(tmp_path, capsys):
    docs = _corpus(tmp_path).read_text(encoding="utf-8").split("\n\n")
    lines = [json.dumps({"text": d}) for d in docs]
    lines[3] = "{broken"
    lines[7] = json.dumps({"body": "no text field"})
    (tmp_path / "x.jsonl").write_text("\n".join(lines) + "\n")
    code, out, err = prepare(capsys, "--input", tmp_path / "x.jsonl", "--output", tmp_path / "out", *SMALL)
    assert code == 0, err
    assert [l for l in out.splitlines() if "jsonl_lines_skipped" in l][0].split()[-1] == "2"


def test_bad_bytes_nul_whitespace_docs_and_single_sentence_docs_are_counted(tmp_path, capsys):
    good = _corpus(tmp_path).read_bytes()
    noisy = (good + b"\n\nBroken \xff\xfe bytes here. And a NUL\x00 too. Third one.\n\n   \n\t\n\nOnly one sentence here.\n"
             b"\n\x01\x02\x7f\n\x03\n")  # the last document is control characters only: empty once cleaned
    (tmp_path / "noisy.txt").write_bytes(noisy)
    (tmp_path / "empty.txt").write_bytes(b"")
    code, out, err = prepare(capsys, "--input", tmp_path / "noisy.txt", "--input", tmp_path / "empty.txt",
                             "--output", tmp_path / "out", *SMALL)
    assert code == 0, err
    counters = {l.split()[0]: int(l.split()[1].replace(",", "")) for l in out.splitlines() if l.startswith("  ")}
    assert counters["replacement_characters"] == 2
    assert counters["nul_characters_removed"] == 1
    assert counters["single_sentence_documents"] >= 1
    assert counters["documents_empty"] == 1


def test_a_fifty_megabyte_line_without_punctuation_is_chunked(tmp_path, capsys):
    words = ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor " * 7).encode()
    line = (words * (50_000_000 // len(words) + 1))[:50_000_000]
    path = tmp_path / "huge.txt"
    with path.open("wb") as handle:
        handle.write(_corpus(tmp_path).read_bytes() + b"\n")
        handle.write(line + b"\n")
    # One document of 50 MB: read and split in linear time, tokenized, paired; no quadratic step, no crash.
    code, out, err = prepare(capsys, "--input", path, "--output", tmp_path / "out", *SMALL,
                             "--tokenizer.sample_sentences", "2000", "--pairs.max_seq_length", "512", "--tokenizer.vocab_size", "200")
    assert code == 0, err
    counters = {l.split()[0]: int(l.split()[1].replace(",", "")) for l in out.splitlines() if l.startswith("  ")}
    assert counters["sentences"] >= 50_000_000 // 2000


def test_empty_input_file_alone(tmp_path, capsys):
    (tmp_path / "empty.txt").write_bytes(b"")
    code, _, err = prepare(capsys, "--input", tmp_path / "empty.txt", "--output", tmp_path / "out", *SMALL)
    assert code == 2 and "the train split received no samples; the input holds no document" in _one_sentence(err)


def test_output_folder_that_cannot_be_written(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, _, err = prepare(capsys, "--input", _corpus(tmp_path), "--output", blocker / "out", *SMALL)
    assert code == 2 and "is not writable" in _one_sentence(err) and "a-file/out" in err


def test_vocab_lacking_special_tokens(tmp_path, capsys):
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\nthe\nof\n")
    code, _, err = prepare(capsys, "--input", _corpus(tmp_path), "--output", tmp_path / "out",
                           "--tokenizer.kind", "wordpiece", "--tokenizer.path", tmp_path / "vocab.txt")
    assert code == 2 and "vocab.txt lacks the special tokens [CLS], [SEP], [MASK]" in _one_sentence(err)


def test_missing_tokenizer_file(tmp_path, capsys):
    code, _, err = prepare(capsys, "--input", _corpus(tmp_path), "--output", tmp_path / "out",
                           "--tokenizer.kind", "sentencepiece", "--tokenizer.path", tmp_path / "nope.model")
    assert code == 2 and "nope.model cannot be read" in _one_sentence(err)


def test_max_seq_length_too_small_for_a_pair(tmp_path, capsys):
    code, _, err = prepare(capsys, "--input", _corpus(tmp_path), "--output", tmp_path / "out", "--pairs.max_seq_length", "4")
    assert code == 2 and "pairs.max_seq_length" in _one_sentence(err)


def test_too_few_samples_for_the_shard_count(tmp_path, capsys):
    code, out, err = prepare(capsys, "--input", _corpus(tmp_path, docs=3), "--output", tmp_path / "out",
                             "--pairs.dupe_factor", "1", "--output.num_shards", "5000", "--output.validation_fraction", "0",
                             "--tokenizer.vocab_size", "200", "--tokenizer.byte_fallback", "false")
    sentence = _one_sentence(err)
    assert code == 2 and "fewer than its 5000 shards; lower output.num_shards" in sentence
    # the job stopped after reading and pairing: what it counted is printed, and nothing is left behind
    assert "counters before the job stopped:" in out and "documents_read" in out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []


def test_validation_split_that_gets_no_document(tmp_path, capsys):
    """A corpus of one document fails before the job starts, not after it: nothing to hold out for validation."""
    code, _, err = prepare(capsys, "--input", _corpus(tmp_path, docs=1), "--output", tmp_path / "out",
                           "--pairs.dupe_factor", "1", "--output.num_shards", "1", "--output.validation_fraction", "0.0001",
                           "--tokenizer.vocab_size", "200", "--tokenizer.byte_fallback", "false")
    assert code == 2 and "the corpus has only 1 document: too few to hold one out for validation" in _one_sentence(err)
    assert "counters" not in capsys.readouterr().out
