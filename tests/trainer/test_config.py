from pathlib import Path

import pytest

from bertline.config import load_config
from bertline.errors import UserError
from trainer.config import TrainConfig, deepspeed_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "train"


def test_every_train_yaml_loads_and_derives_a_deepspeed_json():
    files = sorted(CONFIGS.glob("*.yaml"))
    assert {f.name for f in files} >= {"debug_cpu.yaml", "bert_base_zero2_fp16.yaml", "bert_large_zero2_bf16.yaml"}
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


def _printed(capsys, *argv: str) -> dict:
    import json

    import torch

    from trainer.__main__ import main

    assert main(list(argv)) == 0
    assert not torch.distributed.is_initialized()  # nothing started: no process group, no engine
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda path: path.name)
def test_print_config_of_every_shipped_config(path, capsys):
    printed = _printed(capsys, "--config", str(path), "--print-config", "--world-size", "16")
    config = load_config(TrainConfig, path, {})
    assert printed == {"config": config.model_dump(mode="json"), "deepspeed": deepspeed_config(config, 16)}
    ds = printed["deepspeed"]
    # No optimizer kernel to build at run time: DeepSpeed takes torch's (fused) AdamW, which needs no nvcc.
    assert ds["optimizer"]["type"] == "AdamW" and ds["optimizer"]["params"]["torch_adam"] is True
    if config.train.device == "cuda":
        assert ds["optimizer"]["params"]["fused"] is True
        assert ds["zero_optimization"]["stage"] in (1, 2) and ds["zero_optimization"]["overlap_comm"] is True
        assert ds.get("communication_data_type") == ("fp32" if config.train.precision == "bf16" else None)
        # Evaluation costs under 2% of training on one GPU (the worst case; more ranks share it): a forward is
        # about a third of a training step's work per sample.
        trained = config.data.micro_batch_size * config.train.gradient_accumulation_steps * config.eval.interval * 3
        assert config.eval.samples / trained < 0.02
        assert config.log.interval > 1


def test_print_config_takes_overrides_and_the_world_size_of_the_launcher(capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "0")
    printed = _printed(capsys, "--config", str(CONFIGS / "bert_large_zero2_bf16.yaml"), "--print-config", "--train.zero_stage", "3",
                       "--comm.data_type", "bf16", "--optimizer.implementation", "deepspeed")
    ds = printed["deepspeed"]
    assert ds["train_batch_size"] == 64 * 4 and ds["zero_optimization"]["stage"] == 3 and ds["communication_data_type"] == "bf16"
    assert "torch_adam" not in ds["optimizer"]["params"]  # DeepSpeed's FusedAdam: opt-in


def test_the_renamed_torch_adam_key_says_what_replaced_it():
    with pytest.raises(UserError, match=r"optimizer.torch_adam was replaced by optimizer.implementation"):
        load_config(TrainConfig, None, {"optimizer.torch_adam": "false"})
