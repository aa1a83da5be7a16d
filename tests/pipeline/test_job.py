"""The Beam job end to end on FnApiRunner: structure, sample invariants, determinism, tokenizer kinds."""

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_bert_text
from tests.pipeline.shards import folder_bytes, prepare, read_split

pytestmark = pytest.mark.slow
DEMO = Path(__file__).resolve().parents[2] / "configs" / "pipeline" / "demo.yaml"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The default corpus (pydoc topics) with the demo config, run once for several tests."""
    output = tmp_path_factory.mktemp("demo")
    from pipeline.__main__ import main

    assert main(["--output", str(output), "--config", str(DEMO), "--overwrite"]) == 0
    return output


def test_demo_folder_is_complete_and_balanced(demo_run):
    manifest = json.loads((demo_run / "manifest.json").read_text())
    assert (demo_run / "COMPLETED").exists() and (demo_run / "spm.model").exists()
    assert manifest["format"] == "bertline-webdataset" and manifest["schema_version"] == 2
    for split, count in (("train", 8), ("validation", 2)):
        shards = [s for s in manifest["shards"] if s["split"] == split]
        assert len(shards) == count == manifest["splits"][split]["shards"]
        assert len({s["samples"] for s in shards}) == 1  # exactly equal
        per_record = manifest["splits"][split]["samples_per_record"]
        assert 0 <= manifest["splits"][split]["dropped_remainder"] < count * (per_record + 1)
    assert manifest["tokenizer"]["vocab_size"] == 2000
    assert manifest["config"]["pairs"]["max_seq_length"] == 128


def test_samples_are_well_formed_bert_pairs(demo_run):
    manifest = json.loads((demo_run / "manifest.json").read_text())
    special = manifest["tokenizer"]["special_ids"]
    cls, sep, mask = special["[CLS]"], special["[SEP]"], special["[MASK]"]
    batch = read_split(demo_run, "train")
    total = masked = random_next = kept_or_random = 0
    for shard in batch:
        offsets = np.concatenate([[0], np.cumsum(shard.samples[:, 0])])
        mask_offsets = np.concatenate([[0], np.cumsum(shard.samples[:, 3])])
        for i, (length, a_length, is_random, num_masked) in enumerate(shard.samples):
            tokens = shard.tokens[offsets[i]:offsets[i + 1]]
            assert length <= 128 and tokens[0] == cls and tokens[a_length - 1] == sep and tokens[-1] == sep
            assert (tokens[1:a_length - 1] != sep).all() and (tokens[a_length:-1] != sep).all()
            positions = shard.masked_lm_positions[mask_offsets[i]:mask_offsets[i + 1]]
            ids = shard.masked_input_ids[mask_offsets[i]:mask_offsets[i + 1]]
            assert (np.diff(positions.astype(int)) > 0).all() and num_masked <= 20
            assert not np.isin(tokens[positions], [cls, sep]).any()
            total += length
            masked += num_masked
            random_next += is_random
            kept_or_random += int((ids != mask).sum())
    assert 0.13 < masked / total < 0.16
    assert 0.15 < kept_or_random / masked < 0.25
    samples = sum(len(b) for b in batch)
    assert 0.4 < random_next / samples < 0.6
    assert samples == manifest["splits"]["train"]["samples"]


def test_same_input_same_bytes_with_two_worker_processes(demo_run, tmp_path, capsys):
    code, out, err = prepare(
        capsys, "--output", tmp_path, "--config", DEMO, "--direct_num_workers=2", "--direct_running_mode=multi_processing"
    )
    assert code == 0, err
    assert folder_bytes(tmp_path) == folder_bytes(demo_run)


def test_refuses_a_completed_folder_then_overwrites_it(demo_run, tmp_path, capsys):
    code, out, err = prepare(capsys, "--output", tmp_path, "--config", DEMO)
    assert code == 0
    code, out, err = prepare(capsys, "--output", tmp_path, "--config", DEMO)
    assert code == 2 and err.strip().endswith("already holds a completed run; pass --overwrite to replace it or choose another --output")
    assert "Traceback" not in err
    (tmp_path / "train-00099.tar").write_bytes(b"stale")
    code, out, err = prepare(capsys, "--output", tmp_path, "--config", DEMO, "--overwrite")
    assert code == 0 and not (tmp_path / "train-00099.tar").exists()
    assert "shards:" in out and "counters:" in out


def test_given_sentencepiece_model_gives_the_same_shards(demo_run, tmp_path, capsys):
    code, _, err = prepare(
        capsys, "--output", tmp_path, "--config", DEMO,
        "--tokenizer.kind", "sentencepiece", "--tokenizer.path", demo_run / "spm.model",
    )
    assert code == 0, err
    ours, theirs = folder_bytes(tmp_path), folder_bytes(demo_run)
    assert {k: v for k, v in ours.items() if k.endswith(".tar")} == {k: v for k, v in theirs.items() if k.endswith(".tar")}


def test_wordpiece_vocab_with_whole_word_masking(corpora, bert_vocab, tmp_path, capsys):
    code, out, err = prepare(
        capsys, "--input", corpora / "en_speeches" / "docs.txt", "--output", tmp_path,
        "--tokenizer.kind", "wordpiece", "--tokenizer.path", bert_vocab, "--masking.whole_word", "true",
        "--pairs.dupe_factor", "1", "--output.num_shards", "4", "--output.validation_fraction", "0.05",
    )
    assert code == 0, err
    vocab = bert_vocab.read_text().splitlines()
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["tokenizer"]["special_ids"]["[CLS]"] == 101 and (tmp_path / "vocab.txt").read_bytes() == bert_vocab.read_bytes()
    shard = read_split(tmp_path, "train")[0]
    offsets = np.concatenate([[0], np.cumsum(shard.samples[:, 0])])
    mask_offsets = np.concatenate([[0], np.cumsum(shard.samples[:, 3])])
    text = " ".join(vocab[t] for t in shard.tokens[: offsets[1]])
    assert text.startswith("[CLS]") and "[SEP]" in text
    # whole words: a masked ## piece always has the piece before it masked too, unless truncation left the
    # word's start behind [CLS] or [SEP]
    continuations = 0
    for i in range(len(shard)):
        positions = set(shard.masked_lm_positions[mask_offsets[i]:mask_offsets[i + 1]].tolist())
        tokens = shard.tokens[offsets[i]:offsets[i + 1]]
        for p in positions:
            if vocab[tokens[p]].startswith("##") and tokens[p - 1] not in (101, 102):
                assert p - 1 in positions
                continuations += 1
    assert continuations > 50


def test_chinese_text_with_whole_word_masking(corpora, tmp_path, capsys):
    docs = (corpora / "zh_novels" / "docs.txt").read_text(encoding="utf-8").split("\n\n")[:40]
    source = tmp_path / "zh.txt"
    source.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    config = Path(__file__).resolve().parents[2] / "configs" / "pipeline" / "chinese.yaml"
    code, out, err = prepare(
        capsys, "--input", source, "--output", tmp_path / "out", "--config", config,
        "--tokenizer.vocab_size", "5000", "--pairs.dupe_factor", "1", "--output.num_shards", "2",
        "--output.validation_fraction", "0.25",
    )
    assert code == 0, err
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["samples"] > 500
    assert manifest["splits"]["train"]["random_next"] > 0.3 * manifest["splits"]["train"]["samples"]
    # chinese.yaml spells Chinese in characters: no piece of the trained vocabulary holds two ideographs.
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "out" / manifest["tokenizer"]["file"]))
    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    assert max(sum("\u4e00" <= c <= "\u9fff" for c in piece) for piece in pieces) == 1
    assert manifest["tokenizer"]["vocab_size"] < 5000  # the corpus's characters, fewer than vocab_size asks for


def test_jsonl_gzip_and_parquet_inputs_together(tmp_path, capsys):
    import gzip

    import pyarrow
    import pyarrow.parquet

    from pipeline.__main__ import default_corpus

    documents = Path(default_corpus()).read_text(encoding="utf-8").split("\n\n")
    third = len(documents) // 3
    with gzip.open(tmp_path / "a.jsonl.gz", "wt", encoding="utf-8") as handle:
        for doc in documents[:third]:
            handle.write(json.dumps({"text": doc}) + "\n")
    pyarrow.parquet.write_table(pyarrow.table({"text": documents[third:2 * third]}), tmp_path / "b.parquet")
    write_bert_text(tmp_path / "c.txt", [d.split("\n") for d in documents[2 * third:]])
    code, out, err = prepare(
        capsys, "--input", tmp_path / "*.jsonl.gz", "--input", tmp_path / "*.parquet", "--input", tmp_path / "c.txt",
        "--output", tmp_path / "out", "--config", DEMO,
    )
    assert code == 0, err
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [Path(i["path"]).name for i in manifest["inputs"]] == ["a.jsonl.gz", "b.parquet", "c.txt"]
    assert "documents_read" in out

