"""The job on real text as users bring it: Wikipedia leads, Chinese novels, files without blank lines or
punctuation, small corpora, a failed overwrite. Each test reads what the job wrote back through the format."""

import gzip
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from shardformat.cli import data_card, inspect_main
from shardformat.reader import read_shard
from tests.pipeline.shards import folder_bytes, prepare

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
CHINESE = ROOT / "configs" / "pipeline" / "chinese.yaml"


def _documents(corpora: Path, name: str, megabytes: float) -> list[str]:
    kept, size = [], 0
    for document in (corpora / name / "docs.txt").read_text(encoding="utf-8").split("\n\n"):
        kept.append(document.strip("\n"))
        size += len(document.encode())
        if size >= megabytes * 1e6:
            break
    return kept


def _write(path: Path, documents: list[str]) -> Path:
    path.write_text("\n\n".join(documents) + "\n", encoding="utf-8")
    return path


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


@pytest.mark.parametrize("name,extra", [("en_wiki_summaries", []), ("zh_novels", ["--config", str(CHINESE)])])
def test_random_next_is_half_on_short_and_chinese_documents_and_nothing_is_unk(corpora, tmp_path, capsys, name, extra):
    source = _write(tmp_path / "in.txt", _documents(corpora, name, 1.0))
    code, out, err = prepare(capsys, "--input", source, "--output", tmp_path / "out", *extra)
    assert code == 0, err
    card = data_card(tmp_path / "out")
    for split in ("train", "validation"):
        stats = card["splits"][split]
        assert abs(stats["nsp_random_next_fraction"] - 0.5) <= 0.01, (split, stats)
        assert stats["unk_tokens"] == 0, (split, stats)  # byte fallback: no [UNK] with the trained tokenizer
    assert card["counters"]["tokens_truncated"] == 0
    assert card["splits"]["validation"]["samples"] > 100


def test_the_issue_sentence_round_trips_without_unk(tmp_path, capsys):
    import sentencepiece

    from pipeline.__main__ import default_corpus

    code, _, err = prepare(capsys, "--output", tmp_path / "out", "--config", ROOT / "configs/pipeline/demo.yaml")
    assert code == 0, err
    processor = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "out" / "spm.model"))
    import unicodedata

    for text in ("It rose 5% in 2001/2002 [see A & B*], café — really?", "中文的句子，没有见过的字：龘。"):
        ids = processor.encode(text)
        # SentencePiece normalizes with NFKC (full-width ，：become , :), then spells unseen characters in bytes
        assert processor.unk_id() not in ids and processor.decode(ids) == unicodedata.normalize("NFKC", text)
    assert Path(default_corpus()).exists()


def test_a_file_without_blank_lines_gives_random_next_pairs(corpora, tmp_path, capsys):
    lines = [line for document in _documents(corpora, "en_speeches", 0.5) for line in document.split("\n")]
    source = tmp_path / "one-document.txt"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")  # no blank line: one document
    code, out, err = prepare(capsys, "--input", source, "--output", tmp_path / "out", "--output.validation_fraction", "0",
                             "--tokenizer.vocab_size", "2000")
    assert code == 0, err
    train = _manifest(tmp_path / "out")["splits"]["train"]
    assert abs(train["nsp_random_next_fraction"] - 0.5) <= 0.01 and train["samples"] > 1000


def test_text_without_punctuation_is_cut_by_tokens_and_kept(corpora, tmp_path, capsys):
    """Every own token reaches a sample when B is always the actual next (random_next_prob 0): nothing is
    truncated away, where Google's script loses most of such text."""
    import re

    words = re.sub(r"[^\w\s]", " ", "\n".join(_documents(corpora, "en_speeches", 0.3))).split()
    source = tmp_path / "no-punctuation.txt"
    source.write_text("\n\n".join(" ".join(words[i:i + 3000]) for i in range(0, len(words), 3000)) + "\n", encoding="utf-8")
    code, out, err = prepare(capsys, "--input", source, "--output", tmp_path / "out", "--output.validation_fraction", "0",
                             "--pairs.random_next_prob", "0", "--pairs.dupe_factor", "2", "--output.samples_per_record", "1",
                             "--tokenizer.vocab_size", "2000")
    assert code == 0, err
    manifest = _manifest(tmp_path / "out")
    train, counters = manifest["splits"]["train"], manifest["counters"]
    own_tokens = train["tokens"] - 3 * train["samples"]  # [CLS] A [SEP] B [SEP]
    assert counters["tokens_truncated"] == 0
    assert own_tokens >= 0.99 * 2 * counters["tokens"]  # both passes, all of it (a one-token tail may go)


def test_a_small_corpus_holds_out_enough_documents_before_the_job(corpora, tmp_path, capsys, caplog):
    source = _write(tmp_path / "small.txt", _documents(corpora, "en_wiki_summaries", 0.2)[:100])
    with caplog.at_level(logging.INFO, logger="bertline.pipeline"):
        code, out, err = prepare(capsys, "--input", source, "--output", tmp_path / "out", "--tokenizer.vocab_size", "2000")
    assert code == 0, err
    assert any("holding out 8 (output.min_validation_documents" in r.getMessage() for r in caplog.records)
    validation = _manifest(tmp_path / "out")["splits"]["validation"]
    assert validation["samples"] > 50 and abs(validation["nsp_random_next_fraction"] - 0.5) <= 0.02


def test_single_sentence_documents_stay_in_mlm_unless_dropped(tmp_path, capsys):
    from pipeline.__main__ import default_corpus

    documents = Path(default_corpus()).read_text(encoding="utf-8").split("\n\n")
    one_liners = [f"Document number {i} holds one sentence about the weather in town {i}." for i in range(300)]
    source = _write(tmp_path / "mixed.txt", documents + one_liners)
    common = ["--input", source, "--output.validation_fraction", "0", "--pairs.dupe_factor", "1", "--tokenizer.vocab_size", "2000"]
    code, _, err = prepare(capsys, *common, "--output", tmp_path / "split")
    assert code == 0, err
    code, _, err = prepare(capsys, *common, "--output", tmp_path / "drop", "--pairs.single_sentence_documents", "drop")
    assert code == 0, err
    split, drop = _manifest(tmp_path / "split"), _manifest(tmp_path / "drop")
    assert split["counters"]["single_sentence_documents"] == drop["counters"]["single_sentence_documents_dropped"] == 300
    assert drop["counters"]["tokens_dropped"] > 300 * 8
    assert split["splits"]["train"]["tokens"] > drop["splits"]["train"]["tokens"] + 300 * 8


def test_a_failed_overwrite_leaves_the_previous_output_intact(tmp_path, capsys):
    from pipeline.__main__ import default_corpus

    out = tmp_path / "out"
    code, _, err = prepare(capsys, "--output", out, "--config", ROOT / "configs/pipeline/demo.yaml")
    assert code == 0, err
    before = folder_bytes(out)
    data = gzip.compress(Path(default_corpus()).read_bytes())
    (tmp_path / "cut.txt.gz").write_bytes(data[: len(data) // 2])
    code, stdout, err = prepare(capsys, "--input", tmp_path / "cut.txt.gz", "--output", out, "--overwrite",
                                "--config", ROOT / "configs/pipeline/demo.yaml")
    assert code == 2 and "cut.txt.gz is truncated or corrupt" in err
    assert folder_bytes(out) == before and sorted(p.name for p in out.iterdir()) == sorted(before)  # no _staging left
    assert "counters before the job stopped:" in stdout or "counters" not in stdout


def test_inspect_prints_the_data_card_and_decodes_samples(tmp_path, capsys):
    code, _, err = prepare(capsys, "--output", tmp_path / "out", "--config", ROOT / "configs/pipeline/demo.yaml")
    assert code == 0, err
    assert inspect_main([str(tmp_path / "out"), "--samples", "3", "--json"]) == 0
    card = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    manifest = _manifest(tmp_path / "out")
    for split in ("train", "validation"):
        assert card["splits"][split]["samples"] == manifest["splits"][split]["samples"]
        assert {"nsp_random_next_fraction", "unk_per_1k_tokens", "masked_per_sample", "padding_fraction"} <= set(card["splits"][split])
    assert len(card["samples"]) == 3 and all(s["a"] and s["b"] for s in card["samples"])
    batch = read_shard(tmp_path / "out", manifest["shards"][0])
    assert card["samples"][0]["length"] == int(batch.samples[0, 0])
    assert card["samples"][0]["a"].count("{") == card["samples"][0]["a"].count("→")  # masks shown as {seen→original}
    assert inspect_main([str(tmp_path / "out")]) == 0
    text = capsys.readouterr().out
    assert "nsp_random_next_fraction" in text and "text counters:" in text


def test_chinese_whole_word_masking_masks_whole_jieba_words(corpora, tmp_path):
    """Every masked span of a sample covers whole words of jieba's segmentation (no word half masked)."""
    import random

    import jieba

    from pipeline import tokenizer as tokenizers
    from shardformat.masking import MaskingSpec, mask_sequence

    sentences = [s for d in _documents(corpora, "zh_novels", 0.3) for s in d.replace("\n", "").split("。") if len(s) > 20][:300]
    model = tokenizers.train_sentencepiece(sentences * 3, vocab_size=2000, model_type="unigram", character_coverage=0.9995)
    tok = tokenizers.load_tokenizer("sentencepiece", model)
    spec = MaskingSpec.for_tokenizer(tok.special_ids, tok.vocab_size, masked_lm_prob=0.15, max_predictions_per_seq=20, whole_word=True)
    whole = partial = 0
    for sentence, (ids, starts) in zip(sentences, tok.encode_words(sentences, "jieba")):
        masked = set(mask_sequence(ids, random.Random(len(sentence)), spec, starts).positions)
        proto = tok._sp.encode([sentence], return_type="proto")[0]
        spans, offset = [], 0
        for word in jieba.cut(sentence):
            spans.append((offset, offset + len(word.encode())))
            offset += len(word.encode())
        for begin, end in spans:
            inside = [k for k, piece in enumerate(proto.pieces) if begin <= piece.begin < end]
            hit = [k in masked for k in inside]
            if any(hit):
                whole += all(hit)
                partial += not all(hit)
    assert whole > 200 and partial == 0
    multi = sum(1 for s in sentences for w in jieba.cut(s) if len(w) > 1)
    assert multi > 1000  # the novels' words are mostly two characters or more: masking single characters would split them


def test_prepare_twice_gives_the_same_bytes_with_jieba(corpora, tmp_path, capsys):
    source = _write(tmp_path / "zh.txt", _documents(corpora, "zh_novels", 0.2))
    for name in ("a", "b"):
        code, _, err = prepare(capsys, "--input", source, "--output", tmp_path / name, "--config", CHINESE, "--tokenizer.vocab_size", "4000",
                               "--output.validation_fraction", "0")
        assert code == 0, err
    assert folder_bytes(tmp_path / "a") == folder_bytes(tmp_path / "b")
    batch = read_shard(tmp_path / "a", _manifest(tmp_path / "a")["shards"][0])
    assert len(batch) and batch.samples[:, 3].mean() > 10  # whole words masked, about 15% of 128 tokens
