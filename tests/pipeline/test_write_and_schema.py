import hashlib
import io
import random
import tarfile

import numpy as np
import pytest
import webdataset

from pipeline.schema import MEMBERS, SampleBatch, token_dtype
from pipeline.write import balance_plan, samples_per_shard, tar_bytes


def _batch(n: int, seed: int = 0) -> SampleBatch:
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
    return SampleBatch.from_lists(keys, samples, tokens, positions, ids, dtype=np.dtype(np.uint16))


def test_take_and_sort_keep_samples_whole():
    batch = _batch(50)
    ordered = batch.sorted_by_key()
    assert list(ordered.keys) == sorted(batch.keys)
    original = {int(k): i for i, k in enumerate(batch.keys)}
    t_off = np.concatenate([[0], np.cumsum(batch.samples[:, 0])])
    o_off = np.concatenate([[0], np.cumsum(ordered.samples[:, 0])])
    for j, key in enumerate(ordered.keys):
        i = original[int(key)]
        assert (ordered.tokens[o_off[j]:o_off[j + 1]] == batch.tokens[t_off[i]:t_off[i + 1]]).all()


def test_members_round_trip_and_reject_inconsistent_records():
    batch = _batch(20)
    back = SampleBatch.from_members(batch.to_members())
    for name in ("samples", "tokens", "masked_lm_positions", "masked_input_ids"):
        assert (getattr(back, name) == getattr(batch, name)).all()
    members = batch.to_members()
    members["tokens.npy"] = SampleBatch.from_lists([1], [(3, 2, 0, 0)], [[1, 2, 3]], [[]], [[]], np.dtype(np.uint16)).to_members()["tokens.npy"]
    with pytest.raises(ValueError, match="disagree"):
        SampleBatch.from_members(members)


def test_token_dtype_grows_with_the_vocabulary():
    assert token_dtype(30522) == np.uint16 and token_dtype(65536) == np.uint16 and token_dtype(250_002) == np.int32


@pytest.mark.parametrize("counts,num_shards", [
    ({0: 10, 1: 3, 2: 8, 3: 0}, 4),
    ({0: 7, 1: 7, 2: 7}, 3),
    ({0: 1, 5: 40}, 6),
    ({s: random.Random(s).randint(0, 50) for s in range(16)}, 16),
])
def test_rebalancing_gives_every_shard_exactly_n(counts, num_shards):
    n = samples_per_shard(counts, num_shards)
    plans = balance_plan(counts, num_shards)
    final = {s: plans[s].keep for s in range(num_shards)}
    dropped = 0
    for shard, plan in plans.items():
        assert plan.keep + sum(move.count for move in plan.moves) + plan.dropped == counts.get(shard, 0)
        for move in plan.moves:
            final[move.destination] += move.count
        dropped += plan.dropped
    assert set(final.values()) == {n}
    assert dropped == sum(counts.values()) - n * num_shards < num_shards


def test_tar_is_deterministic_and_reads_with_stock_webdataset(tmp_path):
    batch = _batch(70).sorted_by_key()
    data = tar_bytes(batch, "train", 3, samples_per_record=32)
    assert data == tar_bytes(batch, "train", 3, samples_per_record=32)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
    assert {m.mtime for m in members} == {0} and {m.uname for m in members} == {"bertline"}
    assert sorted(m.name for m in members[:4]) == sorted(f"train-00003-000000.{name}" for name in MEMBERS)
    path = tmp_path / "train-00003.tar"
    path.write_bytes(data)
    # The default decoder turns .npy into arrays with numpy's allow_pickle=False.
    records = list(webdataset.WebDataset(str(path), shardshuffle=False).decode())
    assert [len(r["samples.npy"]) for r in records] == [32, 32, 6]
    assert hashlib.sha256(data).hexdigest() == hashlib.sha256(path.read_bytes()).hexdigest()
