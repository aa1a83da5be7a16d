"""The encoder and heads on their own: sparse loss, long inputs, fine-tuning heads, bad input."""

import pytest
import torch
import torch.nn.functional as F

from model import (
    IGNORE_INDEX, BertConfig, BertForPreTraining, BertForSequenceClassification, BertForTokenClassification, BertModel,
    encode_long,
)


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return BertConfig.preset("tiny", vocab_size=97, max_position_embeddings=64)


def test_presets_have_the_published_shapes():
    base = BertConfig.preset("base", vocab_size=30522)
    assert (base.num_hidden_layers, base.hidden_size, base.num_attention_heads, base.intermediate_size) == (12, 768, 12, 3072)
    large = BertConfig.preset("large", vocab_size=30522)
    assert (large.num_hidden_layers, large.hidden_size, large.num_attention_heads) == (24, 1024, 16)
    parameters = sum(p.numel() for p in BertForPreTraining(base).parameters())
    assert 109_000_000 < parameters < 111_000_000  # BERT-base with heads: ≈ 110M
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        BertConfig.preset("huge", vocab_size=10)
    with pytest.raises(ValueError, match="not a multiple of num_attention_heads"):
        BertConfig(vocab_size=10, hidden_size=100, num_attention_heads=3)


def test_sparse_mlm_loss_equals_the_dense_loss_with_ignore_labels(tiny):
    model = BertForPreTraining(tiny).eval()
    ids = torch.randint(5, 97, (4, 30))
    positions = torch.tensor([[1, 4, 7, 0], [2, 3, 9, 11], [5, 6, 0, 0], [8, 10, 12, 14]])
    labels = torch.randint(5, 97, (4, 4))
    labels[0, 3] = labels[2, 2] = labels[2, 3] = IGNORE_INDEX  # padding slots
    with torch.no_grad():
        sparse = model(ids, masked_lm_positions=positions, masked_lm_labels=labels)
        dense_logits = model(ids).mlm_logits  # (batch, seq, vocab)
    dense_labels = torch.full((4, 30), IGNORE_INDEX)
    for row in range(4):
        for slot in range(4):
            if labels[row, slot] != IGNORE_INDEX:
                dense_labels[row, positions[row, slot]] = labels[row, slot]
    dense = F.cross_entropy(dense_logits.flatten(0, 1), dense_labels.flatten(), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(sparse.mlm_loss, dense)


def test_losses_are_reported_and_the_mlm_decoder_is_the_embedding_matrix(tiny):
    model = BertForPreTraining(tiny)
    ids = torch.randint(5, 50, (2, 16))  # ids 50.. never appear in the input
    labels = torch.tensor([[5, 6], [7, 8]])
    out = model(ids, masked_lm_positions=torch.tensor([[1, 2], [3, 4]]), masked_lm_labels=labels,
                next_sentence_labels=torch.tensor([0, 1]))
    torch.testing.assert_close(out.loss, out.mlm_loss + out.nsp_loss)
    out.loss.backward()
    # Rows of ids absent from the input get gradient only through the tied decoder.
    assert model.bert.embeddings.word_embeddings.weight.grad[60:].abs().sum() > 0
    assert not any(p.shape == (97, 128) for n, p in model.mlm.named_parameters())
    with torch.no_grad():
        logits = model(ids, masked_lm_positions=torch.tensor([[1, 2], [3, 4]])).mlm_logits
    hits = (logits.argmax(-1) == labels).float().mean()
    torch.testing.assert_close(model(ids, masked_lm_positions=torch.tensor([[1, 2], [3, 4]]), masked_lm_labels=labels).mlm_accuracy, hits)


def test_padding_does_not_change_real_tokens(tiny):
    model = BertModel(tiny).eval()
    ids = torch.randint(5, 97, (1, 12))
    padded = torch.cat([ids, torch.zeros(1, 6, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 12), torch.zeros(1, 6)], dim=1).long()
    with torch.no_grad():
        alone = model(ids).last_hidden_state
        with_pad = model(padded, attention_mask=mask).last_hidden_state[:, :12]
    torch.testing.assert_close(alone, with_pad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("length", [40, 129, 130, 150, 200])
def test_encode_long_takes_each_token_from_its_most_central_full_window(tiny, length):
    model = BertModel(tiny).eval()
    ids = torch.randint(5, 97, (length,))
    size, stride = 64, 32
    with torch.no_grad():
        merged = encode_long(model, ids, max_length=size, stride=stride)
        assert merged.shape == (length, 128)
        if length <= size:
            torch.testing.assert_close(merged, model(ids.unsqueeze(0)).last_hidden_state[0], atol=1e-5, rtol=1e-5)
            return
        # Reference: full windows every `stride` tokens, the last one ending at the sequence's end; each
        # token from the window that leaves it the most context on its shorter side.
        starts = sorted({*range(0, length - size, stride), length - size})
        outputs = {s: model(ids[s:s + size].unsqueeze(0)).last_hidden_state[0] for s in starts}
        for position in range(length):
            best = max((s for s in starts if s <= position < s + size),
                       key=lambda s: (min(position - s, s + size - 1 - position), -s))
            torch.testing.assert_close(merged[position], outputs[best][position - best], atol=1e-5, rtol=1e-5)


def test_one_label_sequence_head_is_a_regression(tiny):
    head = BertForSequenceClassification(tiny, num_labels=1)
    out = head(torch.randint(5, 97, (3, 8)), labels=torch.tensor([0.5, 1.5, -2.0]))
    torch.testing.assert_close(out.loss, F.mse_loss(out.logits.squeeze(-1), torch.tensor([0.5, 1.5, -2.0])))
    assert float(out.loss.detach()) > 0


def test_preset_overrides_keep_intermediate_at_four_times_hidden():
    assert BertConfig.preset("tiny", 50, hidden_size=256).intermediate_size == 1024
    assert BertConfig.preset("tiny", 50, hidden_size=256, intermediate_size=300).intermediate_size == 300
    with pytest.raises(ValueError, match="pad_token_id=60 is outside the vocabulary of 50"):
        BertConfig.preset("tiny", 50, pad_token_id=60)
    a, b = BertConfig.preset("tiny", 50), BertConfig.preset("tiny", 50, hidden_dropout_prob=0.0)
    assert a.fingerprint() == b.fingerprint() != BertConfig.preset("mini", 50).fingerprint()


def test_fine_tuning_heads_share_the_encoder(tiny):
    encoder = BertModel(tiny)
    sequence = BertForSequenceClassification(tiny, num_labels=3, bert=encoder)
    token = BertForTokenClassification(tiny, num_labels=5, bert=encoder)
    ids = torch.randint(5, 97, (2, 10))
    out = sequence(ids, labels=torch.tensor([0, 2]))
    assert out.logits.shape == (2, 3) and out.loss is not None
    labels = torch.randint(0, 5, (2, 10))
    labels[:, 0] = IGNORE_INDEX
    out = token(ids, labels=labels)
    assert out.logits.shape == (2, 10, 5) and out.loss is not None
    assert sequence.bert is token.bert


@pytest.mark.parametrize("build,message", [
    (lambda: (torch.tensor([[5, 6, 97]]),), "token id 97 is outside the vocabulary of 97"),
    (lambda: (torch.randint(5, 97, (1, 65)),), "sequence length 65 exceeds max_position_embeddings=64"),
    (lambda: (torch.randint(5, 97, (8,)),), r"input_ids must be \(batch, seq\)"),
    (lambda: (torch.randint(5, 97, (2, 8)), torch.zeros(2, 7, dtype=torch.long)), "token_type_ids has shape"),
    (lambda: (torch.randint(5, 97, (2, 8)), None, torch.ones(2, 9)), "attention_mask has shape"),
])
def test_bad_input_is_one_sentence(tiny, build, message):
    with pytest.raises(ValueError, match=message):
        BertModel(tiny)(*build())


def test_bad_masked_positions_are_one_sentence(tiny):
    model = BertForPreTraining(tiny)
    with pytest.raises(ValueError, match=r"masked_lm_positions span 1\.\.20 in sequences of 10"):
        model(torch.randint(5, 97, (1, 10)), masked_lm_positions=torch.tensor([[1, 20]]))
    with pytest.raises(ValueError, match=r"masked_lm_positions span -1\.\.2"):
        model(torch.randint(5, 97, (1, 10)), masked_lm_positions=torch.tensor([[-1, 2]]))


def test_training_flops_count_bert_base_like_the_literature():
    base = BertConfig.preset("base", vocab_size=30522)
    layer_parameters = sum(p.numel() for p in BertModel(BertConfig.preset("base", vocab_size=10)).layers.parameters())
    assert 84e6 < layer_parameters < 86e6  # BERT-base's encoder stack
    expected = 6 * layer_parameters * 128 + 12 * 12 * 128 * 768 * 128 + 6 * 20 * (768 * 768 + 768 * 30522)
    assert base.training_flops_per_sequence(128, 20) == pytest.approx(expected, rel=0.005)  # biases/LN left out
