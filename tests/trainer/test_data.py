"""The training loader over real shards written by the pipeline: order, partition, elastic resume,
collation, dynamic masking, integrity checks."""

import json
import shutil
from pathlib import Path

import numpy as np

import pytest
import torch

from bertline.errors import UserError
from shardformat.masking import MaskingSpec
from trainer.data import (
    IGNORE_INDEX, LoaderSpec, PretrainingBatches, ShardSet, batches_per_epoch, rank_slice, record_order, shard_order,
    worker_batches,
)

DEMO = Path(__file__).resolve().parents[2] / "configs" / "pipeline" / "demo.yaml"


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    from pipeline.__main__ import main

    output = tmp_path_factory.mktemp("shards")
    assert main(["--output", str(output), "--config", str(DEMO), "--output.num_shards", "4",
                 "--output.samples_per_record", "4", "--pairs.dupe_factor", "2"]) == 0
    return output


def test_rank_slices_tile_each_global_batch_and_workers_cover_every_batch():
    for world, micro in ((1, 8), (2, 4), (4, 3)):
        covered = []
        for rank in range(world):
            covered.extend(range(*rank_slice(100, 2, micro, world, rank)))
        assert sorted(covered) == list(range(100 + 2 * micro * world, 100 + 3 * micro * world))
    assert sorted(b for w in range(3) for b in worker_batches(10, w, 3)) == list(range(10))
    assert batches_per_epoch(100, 0, 16) == 6 and batches_per_epoch(100, 96, 16) == 0
    assert (shard_order(1, 0, 10) == shard_order(1, 0, 10)).all() and sorted(shard_order(1, 0, 10)) == list(range(10))
    assert not (shard_order(1, 0, 10) == shard_order(1, 1, 10)).all()


def _content(batch):
    ids, mask = batch["input_ids"], batch["attention_mask"]
    labels, positions = batch["masked_lm_labels"], batch["masked_lm_positions"]
    rows = []
    for i in range(len(ids)):
        original = ids[i].clone()
        used = labels[i] != IGNORE_INDEX
        original[positions[i][used]] = labels[i][used]
        rows.append(tuple(original[mask[i].bool()].tolist()))
    return rows


def test_elastic_resume_sees_every_sample_once(shards):
    shard_set = ShardSet.open(shards)
    total = shard_set.total_samples
    two = [PretrainingBatches(shard_set, LoaderSpec(micro_batch_size=4, world_size=2, rank=r, seed=3)) for r in range(2)]
    seen_index, seen_content = [], []
    for _ in range(7):  # seven global batches on 2 ranks
        for loader in two:
            batch = loader.batch(0)
            seen_index += batch["sample_index"].tolist()
            seen_content += _content(batch)
        for loader in two:
            loader.advance()
    state = two[0].state_dict()
    assert state == {"epoch": 0, "position": 56}
    one = PretrainingBatches(shard_set, LoaderSpec(micro_batch_size=5, world_size=1, rank=0, seed=3))
    one.load_state_dict(state)
    for batch in one:  # the rest of the epoch on 1 rank with another micro batch
        seen_index += batch["sample_index"].tolist()
        seen_content += _content(batch)
    assert seen_index == list(range(len(seen_index)))  # no repeat, no gap
    assert total - len(seen_index) < 5  # only the tail that cannot fill a global batch is dropped
    assert len(set(seen_content)) > 0.95 * len(seen_content)  # distinct samples (a few texts repeat in the corpus)


def test_dataloader_workers_keep_the_order_and_collate_inside(shards):
    shard_set = ShardSet.open(shards)
    spec = LoaderSpec(micro_batch_size=16, seed=1)
    plain = [b["sample_index"].tolist() for b in PretrainingBatches(shard_set, spec)]
    loader = torch.utils.data.DataLoader(PretrainingBatches(shard_set, spec), batch_size=None, num_workers=2)
    assert [b["sample_index"].tolist() for b in loader] == plain


def test_collated_batches_carry_the_static_masks(shards):
    shard_set = ShardSet.open(shards)
    batch = PretrainingBatches(shard_set, LoaderSpec(micro_batch_size=32, seed=0)).batch(0)
    mask_id = shard_set.tokenizer["special_ids"]["[MASK]"]
    ids, labels, positions = batch["input_ids"], batch["masked_lm_labels"], batch["masked_lm_positions"]
    assert ids.shape[1] % 8 == 0 and ids.shape[1] <= 128
    assert positions.shape[1] == shard_set.max_predictions_per_seq
    used = labels != IGNORE_INDEX
    rows = torch.arange(len(ids))[:, None].expand_as(positions)
    at_masks = ids[rows[used], positions[used]]
    assert 0.7 < float((at_masks == mask_id).float().mean()) < 0.9
    assert (batch["attention_mask"].sum(1) >= 5).all()  # [CLS] A [SEP] B [SEP], A and B never empty
    assert set(batch["token_type_ids"].unique().tolist()) == {0, 1}
    assert set(batch["next_sentence_labels"].tolist()) <= {0, 1}


def test_dynamic_masking_is_reproducible_and_changes_with_the_epoch(shards):
    shard_set = ShardSet.open(shards)
    spec = MaskingSpec.for_tokenizer(shard_set.tokenizer["special_ids"], shard_set.tokenizer["vocab_size"],
                                     masked_lm_prob=0.15, max_predictions_per_seq=20)
    loader_spec = LoaderSpec(micro_batch_size=8, seed=5, masking="dynamic")
    first = PretrainingBatches(shard_set, loader_spec, spec).batch(3)
    again = PretrainingBatches(shard_set, loader_spec, spec).batch(3)
    assert torch.equal(first["input_ids"], again["input_ids"])
    static = PretrainingBatches(shard_set, LoaderSpec(micro_batch_size=8, seed=5)).batch(3)
    assert torch.equal(first["sample_index"], static["sample_index"]) and not torch.equal(first["input_ids"], static["input_ids"])


def test_resume_is_a_seek(shards):
    shard_set = ShardSet.open(shards)
    loader = PretrainingBatches(shard_set, LoaderSpec(micro_batch_size=4, seed=2))
    loader.load_state_dict({"epoch": 1, "position": 400})
    assert loader.batch(0)["sample_index"].tolist() == [400, 401, 402, 403]


def test_a_flipped_byte_names_its_shard_and_record(shards, tmp_path, capsys):
    from shardformat.cli import verify_main

    broken = tmp_path / "broken"
    shutil.copytree(shards, broken)
    shard_set = ShardSet.open(broken)
    entry = shard_set.shards[0]
    index = np.load(broken / entry["index"]["path"])
    path = broken / entry["path"]
    data = bytearray(path.read_bytes())
    data[int(index["offset"][1]) + 40] ^= 0xFF  # inside record 1's bytes
    path.write_bytes(bytes(data))
    loader = PretrainingBatches(ShardSet.open(broken), LoaderSpec(micro_batch_size=8, seed=0))
    with pytest.raises(UserError, match=r"shard .*train-00000\.tar record 1 \(bytes \d+-\d+\) does not match its index hash"):
        for _ in loader:
            pass
    skipping = PretrainingBatches(ShardSet.open(broken), LoaderSpec(micro_batch_size=8, seed=0, skip_corrupt_shards=True))
    batches = list(skipping)
    assert len(batches) == len(skipping) and skipping.skipped_records == [("train-00000.tar", 1)]
    assert batches[-1]["skipped_records"].tolist() == [1]  # each batch says what its loader (or worker) skipped so far
    assert verify_main([str(broken)]) == 1
    captured = capsys.readouterr()
    assert "train-00000.tar: 2 problem(s)" in captured.out and "train-00001.tar: ok" in captured.out
    assert "record 1 (bytes" in captured.err and "sha256" in captured.err
    assert verify_main([str(shards)]) == 0


def test_corrupt_index_truncated_and_incomplete_shard_folders(shards, tmp_path, capsys):
    from shardformat.cli import verify_main

    broken = tmp_path / "broken"
    shutil.copytree(shards, broken)
    shard_set = ShardSet.open(broken)
    entry = shard_set.shards[0]
    index_path = broken / entry["index"]["path"]
    data = bytearray(index_path.read_bytes())
    data[-3] ^= 0xFF  # the last record's hash
    index_path.write_bytes(bytes(data))
    last = entry["records"] - 1
    with pytest.raises(UserError, match=rf"shard .*train-00000\.tar record {last} .* does not match its index hash"):
        for _ in PretrainingBatches(ShardSet.open(broken), LoaderSpec(micro_batch_size=8, seed=0)):
            pass
    assert verify_main([str(broken)]) == 1 and "train-00000.idx.npy: " in capsys.readouterr().err
    index_path.write_bytes(b"not an index" + bytes(data[12:]))  # a damaged header: the whole shard is unusable
    with pytest.raises(UserError, match=r"shard index .*train-00000\.idx\.npy has no readable \.npy header"):
        for _ in PretrainingBatches(ShardSet.open(broken), LoaderSpec(micro_batch_size=8, seed=0)):
            pass
    skipping = PretrainingBatches(ShardSet.open(broken), LoaderSpec(micro_batch_size=8, seed=0, skip_corrupt_shards=True))
    batches = list(skipping)
    assert len(batches) == len(skipping) and skipping.skipped_shards == ["train-00000.tar"]
    assert batches[-1]["skipped_shards"].tolist() == [0]
    path = broken / shard_set.shards[1]["path"]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError, match=r"train-00001\.tar has \d+ bytes but the manifest says \d+: it is truncated"):
        ShardSet.open(broken)
    (broken / "COMPLETED").unlink()
    with pytest.raises(UserError, match="has no COMPLETED marker"):
        ShardSet.open(broken)


def test_a_folder_of_the_old_format_is_refused_with_the_fix(shards, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(shards, old)
    manifest = json.loads((old / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 1}))
    with pytest.raises(UserError, match=r"holds bertline-webdataset format v1, but this bertline reads bertline-webdataset v2 "
                                        r"\(indexed records\); re-run `bertline prepare` with this version"):
        ShardSet.open(old)


def test_a_rank_reads_only_its_records(shards):
    shard_set = ShardSet.open(shards)
    total = sum(s["bytes"] for s in shard_set.shards)
    for world in (1, 2, 4):
        loader = PretrainingBatches(shard_set, LoaderSpec(micro_batch_size=16, world_size=world, rank=world - 1, seed=9))
        batches = sum(1 for _ in loader)
        assert batches == len(loader)
        # record bytes and their index rows only (no tar headers), so a rank reads less than its share of the files
        assert loader.bytes_read <= total / world


def test_record_order_is_a_permutation_fixed_per_epoch_and_shard():
    first = record_order(1, 0, 3, 160, 16)
    assert sorted(first) == list(range(10)) and (first == record_order(1, 0, 3, 160, 16)).all()
    assert not (first == record_order(1, 1, 3, 160, 16)).all() and not (first == record_order(1, 0, 4, 160, 16)).all()
    assert record_order(1, 0, 0, 10, 16).tolist() == [0]  # a shard smaller than a record


def test_advancing_while_iterating_in_process_keeps_the_pass(shards):
    loader = PretrainingBatches(ShardSet.open(shards), LoaderSpec(micro_batch_size=8, seed=4))
    seen = []
    for batch in loader:  # the trainer's pattern with num_workers=0: advance after each batch
        seen += batch["sample_index"].tolist()
        loader.advance()
    assert seen == list(range(len(seen))) and loader.state_dict() == {"epoch": 1, "position": 0}
