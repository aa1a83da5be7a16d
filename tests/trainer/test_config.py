from pathlib import Path

import pytest

from bertline.config import load_config
from bertline.errors import UserError
from trainer.config import TrainConfig, deepspeed_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "train"


def test_every_train_yaml_loads_and_derives_a_deepspeed_json():
    files = sorted(CONFIGS.glob("*.yaml"))
    assert {f.name for f in files} >= {"debug_cpu.yaml", "bert_base_zero2_fp16.yaml", "bert_large_zero3_bf16.yaml"}
    for path in files:
        config = load_config(TrainConfig, path, {})
        ds = deepspeed_config(config, world_size=8)
        assert ds["train_batch_size"] == config.data.micro_batch_size * config.train.gradient_accumulation_steps * 8
        assert ds["gradient_clipping"] == config.train.gradient_clipping  # explicit: DeepSpeed's default is 1.0


def test_fp16_block_carries_the_loss_scaling_settings():
    config = load_config(TrainConfig, CONFIGS / "bert_base_zero2_fp16.yaml", {"train.hysteresis": "3"})
    assert deepspeed_config(config, 1)["fp16"] == {"enabled": True, "loss_scale": 0, "initial_scale_power": 16,
                                                  "loss_scale_window": 1000, "hysteresis": 3, "min_loss_scale": 1.0}


@pytest.mark.parametrize("overrides,message", [
    ({"train.precision": "fp16", "train.zero_stage": "0"}, "PR #8393"),
    ({"optimizer.name": "lamb", "train.zero_stage": "2"}, "trust ratio is wrong on ZeRO partitions"),
    ({"train.offload_optimizer": "true", "train.zero_stage": "1"}, "needs train.zero_stage 2 or 3"),
    ({"train.max_step": "5"}, "unknown config key 'train.max_step'"),
    ({"train.compile": "true", "train.zero_stage": "3"}, "torch.compile traces ZeRO-3's partitioned (empty) parameters"),
])
def test_combinations_deepspeed_cannot_honour_are_one_sentence(overrides, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(TrainConfig, None, overrides)


def test_batch_sizes_that_do_not_multiply_out():
    config = load_config(TrainConfig, None, {"train.global_batch_size": "100", "data.micro_batch_size": "8"})
    with pytest.raises(UserError, match=r"global_batch_size=100 but .* = 32; make them agree"):
        deepspeed_config(config, world_size=4)
