"""The only module that imports DeepSpeed: engine construction, checkpoint save/load."""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import sys
from pathlib import Path

import deepspeed
import torch

from model import BertForPreTraining
from trainer.dist import Placement
from trainer.schedule import learning_rate


def init_distributed(placement: Placement, device: str, timeout_minutes: float = 30.0) -> None:
    """env:// rendezvous from any launcher (DeepSpeed reads no SLURM_* variable itself); NCCL on GPUs, gloo on CPU."""
    os.environ.update(placement.environment())
    if device == "cuda":
        # Ranks on this node: torchrun/deepspeed say LOCAL_WORLD_SIZE; Slurm SLURM_NTASKS_PER_NODE ("8" or "8(x4)").
        local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("SLURM_NTASKS_PER_NODE", "0").split("(")[0] or 0)
        torch.cuda.set_device(gpu_index(placement.local_rank, torch.cuda.device_count(), local_ranks))
    deepspeed.init_distributed(dist_backend="nccl" if device == "cuda" else "gloo", auto_mpi_discovery=False,
                               timeout=datetime.timedelta(minutes=timeout_minutes))


def gpu_index(local_rank: int, visible: int, local_ranks: int) -> int:
    """The GPU a rank uses: the only one it sees (srun --gpu-bind=single:1 or --gpus-per-task=1 gave it its own), or
    the one of its local rank when it sees them all; anything between would put two ranks on one GPU."""
    if visible == 1:
        return 0
    if local_rank < visible and (local_ranks == 0 or local_ranks <= visible):
        return local_rank
    from bertline.errors import UserError

    raise UserError(f"local rank {local_rank} sees {visible} GPUs for {local_ranks or 'several'} ranks on its node: two ranks would "
                    f"share a GPU; let every rank see one GPU (slurm.gpu_bind single:1) or all of them (slurm.gpu_bind none)")


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: biases and LayerNorm weights (all 1-D tensors) are not decayed."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_engine(model: BertForPreTraining, ds_config: dict, schedule: dict, weight_decay: float, compile_backend: str | None = None):
    """DeepSpeed engine with our LR schedule (a pure function of the step) as a LambdaLR; compiled with
    torch.compile's `compile_backend` when one is given."""
    peak = ds_config["optimizer"]["params"]["lr"]

    def scheduler(optimizer):
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: learning_rate(step, peak=peak, **schedule) / peak)

    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=parameter_groups(model, weight_decay), config=ds_config, lr_scheduler=scheduler
    )
    if compile_backend is not None:
        engine.compile(backend=compile_backend)
    return engine


def loss_scale(engine) -> float | None:
    optimizer = engine.optimizer
    scale = getattr(optimizer, "cur_scale", None) or getattr(optimizer, "loss_scale", None)
    return float(scale) if scale is not None and engine.fp16_enabled() else None


def save(engine, folder: str, tag: str, client_state: dict) -> None:
    engine.save_checkpoint(folder, tag=tag, client_state=client_state)


def load(engine, folder: str, tag: str) -> dict:
    _, client_state = engine.load_checkpoint(folder, tag=tag)
    if client_state is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {folder}/{tag}")
    return client_state


def to_universal(step_folder: Path) -> Path:
    """Convert a ZeRO checkpoint to DeepSpeed's universal format (per-parameter fp32 weights and optimizer
    moments, loadable on any world size or stage), once: `<step>/universal`. Run on one rank only."""
    output = step_folder / "universal"
    if output.exists():
        return output
    partial = step_folder / "universal.partial"
    shutil.rmtree(partial, ignore_errors=True)  # left by a conversion that was killed
    # --inject_missing_state: ZeRO-2 checkpoints lack fields the converter wants (FACTS); one worker each
    # because the conversion is I/O-bound and must not fight the node's other ranks for cores.
    command = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(step_folder),
               "--output_folder", str(partial), "--inject_missing_state", "--num_extract_workers", "1", "--num_merge_workers", "1"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"converting {step_folder} to a universal checkpoint failed:\n{result.stdout[-2000:]}{result.stderr[-3000:]}")
    partial.rename(output)
    return output


def consolidated_state_dict(folder: str, tag: str) -> dict[str, torch.Tensor]:
    """fp32 weights of a (possibly ZeRO-partitioned) checkpoint, gathered into one state dict."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(folder, tag=tag)
