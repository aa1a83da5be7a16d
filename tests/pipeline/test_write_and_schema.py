"""The shard format's pure parts: the record codec, the streaming shard writer and its index, the spill files
and the shard plan."""

import hashlib
import io
import random
import tarfile

import numpy as np
import pytest
import webdataset

from pipeline.write import (
    KEY_GROUPS, BucketSummary, SpillReader, SpillWriter, plan_shards, samples_per_shard, shard_count,
)
from shardformat.reader import load_index
from shardformat.schema import INDEX_DTYPE, SampleBatch, decode_record, encode_record, record_hash, token_dtype
from shardformat.writer import ShardWriter


def _batch(n: int, seed: int = 0, dtype=np.uint16) -> tuple[np.ndarray, SampleBatch]:
    draw = random.Random(seed)
    keys, samples, tokens, positions, ids = [], [], [], [], []
    for _ in range(n):
        length = draw.randint(5, 40)
        seq = [draw.randrange(5, 30000) for _ in range(length)]
        chosen = sorted(draw.sample(range(1, length - 1), k=min(3, length - 2)))
        keys.append(draw.getrandbits(64))
        samples.append((length, draw.randint(2, length - 2), draw.randint(0, 1), len(chosen)))
        tokens.append(seq)
        positions.append(chosen)
        ids.append([4] * len(chosen))
    return np.array(keys, dtype=np.uint64), SampleBatch.from_lists(samples, tokens, positions, ids, dtype=np.dtype(dtype))


def _same(a: SampleBatch, b: SampleBatch) -> bool:
    return all(np.array_equal(getattr(a, name), getattr(b, name)) for name in ("samples", "tokens", "masked_lm_positions", "masked_input_ids"))


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_records_round_trip_and_reject_inconsistent_bytes(dtype):
    _, batch = _batch(20, dtype=dtype)
    data = encode_record(batch)
    assert len(data) == batch.payload_bytes()
    assert _same(decode_record(data), batch)
    with pytest.raises(ValueError, match="disagree"):
        decode_record(data[:-2])
    with pytest.raises(ValueError, match="declares"):
        decode_record(data[:20])


def test_take_and_slice_keep_samples_whole():
    _, batch = _batch(50)
    order = np.arange(49, -1, -1)
    reversed_ = batch.take(order)
    assert _same(reversed_.take(order), batch)
    assert _same(batch.slice(10, 20), batch.take(np.arange(10, 20)))


def test_token_dtype_grows_with_the_vocabulary():
    assert token_dtype(30522) == np.uint16 and token_dtype(65536) == np.uint16 and token_dtype(250_002) == np.int32


def _write_shard(batches, samples_per_record):
    stream = io.BytesIO()
    writer = ShardWriter(stream, "train-00003", samples_per_record, unk_id=7)
    for batch in batches:
        writer.write(batch)
    written = writer.finish()
    return stream.getvalue(), written


def test_shard_writer_is_deterministic_streams_records_and_indexes_them(tmp_path):
    _, batch = _batch(70)
    # fed in uneven pieces: the records do not depend on how samples arrive
    data, written = _write_shard([batch.slice(0, 5), batch.slice(5, 40), batch.slice(40, 70)], samples_per_record=16)
    again, _ = _write_shard([batch], samples_per_record=16)
    assert data == again and written.bytes == len(data) and written.sha256 == hashlib.sha256(data).hexdigest()
    index = load_index(written.index, "test")
    assert index.dtype == INDEX_DTYPE and index["samples"].tolist() == [16, 16, 16, 16, 6]
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
    assert {m.mtime for m in members} == {0} and {m.uname for m in members} == {"bertline"}
    assert [m.name for m in members][:2] == ["train-00003-00000000.rec", "train-00003-00000001.rec"]
    assert [(m.offset_data, m.size) for m in members] == [(int(o), int(s)) for o, s in index[["offset", "size"]].tolist()]
    for row in index:
        record = data[row["offset"]:row["offset"] + row["size"]]
        assert record_hash(record) == row["sha256"]
    path = tmp_path / "train-00003.tar"
    path.write_bytes(data)
    records = list(webdataset.WebDataset(str(path), shardshuffle=False))
    assert _same(SampleBatch.concat([decode_record(r["rec"]) for r in records]), batch)
    assert written.stats.samples == 70 and written.stats.tokens == int(batch.samples[:, 0].sum())


def test_spill_files_return_any_slice_of_any_piece_in_key_order(tmp_path):
    keys, batch = _batch(3000, seed=1)
    path = tmp_path / "bucket.spill"
    with open(path, "wb") as stream:
        spill = SpillWriter(stream)
        spill.add_run(keys[:1800], batch.slice(0, 1800))
        spill.add_run(keys[1800:], batch.slice(1800, 3000))
        counts, payload = spill.finish()
    assert counts.shape == (2, KEY_GROUPS) and counts.sum() == 3000 and payload.sum() == batch.payload_bytes() - 8
    reader = SpillReader(str(path))
    run, group = 1, int(np.argmax(counts[1]))
    piece = SampleBatch.concat(list(reader.read(run, group, 0, int(counts[run, group]))))
    mine = np.flatnonzero((np.arange(3000) >= 1800) & ((keys >> np.uint64(58)).astype(int) == group))
    assert _same(piece, batch.take(mine[np.argsort(keys[mine], kind="stable")]))
    part = SampleBatch.concat(list(reader.read(run, group, 3, 5)))
    assert _same(part, piece.slice(3, 8))


@pytest.mark.parametrize("buckets,shards", [(1, 1), (3, 4), (7, None), (5, 13)])
def test_shard_plan_gives_every_shard_exactly_n_and_drops_only_a_small_tail(buckets, shards):
    draw = np.random.default_rng(buckets)
    summaries = [BucketSummary(b, draw.integers(0, 40, (draw.integers(1, 3), KEY_GROUPS)), draw.integers(0, 9000, (1, KEY_GROUPS)), 1)
                 for b in range(buckets)]
    total = sum(int(s.counts.sum()) for s in summaries)
    plans = plan_shards(summaries, "train", 16, shard_mb=1, num_shards=shards)
    n = plans[0].samples_per_shard
    assert len(plans) == plans[0].num_shards and (shards is None or len(plans) == shards)
    assert all(int(p.slices[:, 4].sum()) == n for p in plans) and (n % 16 == 0 or n % 16 > n // 100)
    assert 0 <= total - n * len(plans) < len(plans) * 17
    # together the slices cover each piece's samples once, from its start, in (group, bucket, run) order
    covered = {}
    for plan in plans:
        for bucket, run, group, start, count in plan.slices.tolist():
            assert covered.get((bucket, run, group), 0) == start
            covered[(bucket, run, group)] = start + count
    order = [key for key in sorted(covered, key=lambda k: (k[2], k[0], k[1]))]
    assert list(covered) == order


def test_shard_count_follows_the_bytes_unless_fixed():
    assert shard_count(1000, 300 << 20, 16, shard_mb=256, num_shards=None) == 2
    assert shard_count(1000, 10 << 20, 16, shard_mb=256, num_shards=None) == 1
    assert shard_count(1000, 10 << 20, 16, shard_mb=256, num_shards=8) == 8
    assert samples_per_shard(100_000, 3, 16) == 33_328  # a multiple of 16: 5 samples fewer per shard
    assert samples_per_shard(1000, 3, 16) == 333 and samples_per_shard(20, 3, 16) == 6  # small shards keep theirs
