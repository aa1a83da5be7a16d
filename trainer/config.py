"""The training config tree: `configs/train/*.yaml` plus dotted overrides (`--train.max_steps 100`).
The DeepSpeed JSON is derived from it (`deepspeed_config`), never kept by hand."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from bertline.config import Section
from bertline.errors import UserError


class ModelSection(Section):
    preset: Literal["tiny", "mini", "small", "base", "large"] = Field("tiny", description="Encoder size (model.config.PRESETS); not used with init_from.")
    init_from: str | None = Field(
        None, description="Start from these weights only (optimizer, schedule, data position and step count start fresh): a step "
        "folder <run_dir>/checkpoints/stepN of a bertline run, or a HuggingFace BERT folder (config.json, weights, vocab.txt). "
        "The architecture is the source's and the shards must use its tokenizer. A run's own newest checkpoint wins over this.",
    )
    position_embedding_type: Literal["learned", "sinusoidal"] = Field("learned", description="BERT's learned positions or the fixed sinusoidal table (with init_from: the source's).")
    max_position_embeddings: int | None = Field(
        None, ge=8, description="Positions the model can take; must cover the shards' max_seq_length. Default: 512, or the "
        "init_from source's; above the source's, its learned table is extended by repetition; below it is refused.",
    )
    hidden_dropout_prob: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout after embeddings, attention output and feed-forward.")
    attention_probs_dropout_prob: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout on attention probabilities.")


class DataSection(Section):
    shards: str = Field("runs/demo/shards", description="Folder written by `bertline prepare` (needs manifest.json and COMPLETED).")
    micro_batch_size: int = Field(8, ge=1, description="Sequences per rank per forward pass.")
    masking: Literal["static", "dynamic"] = Field("static", description="Use the shards' masks, or re-mask every epoch from the original tokens.")
    masked_lm_prob: float = Field(0.15, gt=0.0, lt=1.0, description="Share of tokens masked when masking is dynamic.")
    num_workers: int = Field(0, ge=0, description="Loader worker processes per rank (batches are collated inside them).")
    pad_to_multiple_of: int = Field(8, ge=1, description="Pad each batch to its longest sequence rounded up to this multiple.")
    fixed_length: bool = Field(False, description="Pad every batch to the shards' max_seq_length instead.")
    skip_corrupt_shards: bool = Field(False, description="Warn, count and skip a shard whose bytes do not match the manifest, instead of stopping.")
    record_samples: bool = Field(False, description="Rank 0 appends every step's sample ids, per rank, to <run_dir>/samples.jsonl (an audit of what was trained on, across resumes).")


class OptimizerSection(Section):
    name: Literal["adamw", "lamb"] = Field("adamw", description="AdamW, or LAMB (ZeRO stage 0 only, GPU only).")
    lr: float = Field(1e-4, gt=0.0, description="Peak learning rate.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam betas.")
    eps: float = Field(1e-6, gt=0.0, description="Adam epsilon.")
    weight_decay: float = Field(0.01, ge=0.0, description="Decoupled weight decay; never applied to biases and LayerNorm weights.")
    implementation: Literal["torch_fused", "torch", "deepspeed"] = Field(
        "torch_fused", description="AdamW kernels: torch_fused (torch.optim.AdamW(fused=True): one kernel per step, nothing to "
        "build), torch (its foreach path), or deepspeed (DeepSpeed's FusedAdam, or DeepSpeedCPUAdam with offload_optimizer: "
        "compiled with nvcc/g++ on first use in every rank unless DeepSpeed was installed with DS_BUILD_FUSED_ADAM=1 / "
        "DS_BUILD_CPU_ADAM=1). LAMB is always DeepSpeed's FusedLamb (DS_BUILD_FUSED_LAMB=1 to prebuild).",
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, values):
        if isinstance(values, dict) and "torch_adam" in values:
            raise ValueError("optimizer.torch_adam was replaced by optimizer.implementation (torch_fused, torch or deepspeed); "
                             "torch_adam: true is implementation: torch_fused, false is implementation: deepspeed")
        return values


class ScheduleSection(Section):
    warmup_steps: int = Field(100, ge=0, description="Optimizer steps of linear warmup from 0 to the peak LR.")
    decay: Literal["linear", "polynomial", "cosine", "constant"] = Field("linear", description="Shape of the decay after warmup.")
    end_fraction: float = Field(0.0, ge=0.0, le=1.0, description="LR at train.max_steps as a fraction of the peak.")
    power: float = Field(1.0, gt=0.0, description="Exponent of the polynomial decay.")


class TrainSection(Section):
    max_steps: int = Field(1000, ge=1, description="Optimizer steps to train for.")
    device: Literal["auto", "cuda", "cpu"] = Field(
        "auto", description="cuda (one GPU per rank, NCCL), cpu (gloo), or auto: cuda when a GPU is visible. `bertline submit` asks for GPUs when cuda.",
    )
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro batches per optimizer step.")
    global_batch_size: int | None = Field(None, ge=1, description="If set, must equal micro × accumulation × world size (checked at start).")
    gradient_clipping: float = Field(1.0, ge=0.0, description="Max global gradient norm; 0 disables (DeepSpeed's own default is 1.0).")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="fp16 uses dynamic loss scaling.")
    zero_stage: int = Field(2, ge=0, le=3, description="DeepSpeed ZeRO stage.")
    compile: bool = Field(False, description="torch.compile the model inside the engine (GPUs: faster steps after the first few, which compile).")
    compile_backend: str = Field("inductor", description="torch.compile backend (inductor; eager checks the graph capture without code generation).")
    offload_optimizer: bool = Field(False, description="Keep optimizer state in CPU memory (ZeRO 2/3).")
    initial_scale_power: int = Field(16, ge=0, le=64, description="fp16: the first loss scale is 2**this.")
    loss_scale_window: int = Field(1000, ge=1, description="fp16: steps without overflow before the scale doubles.")
    hysteresis: int = Field(2, ge=1, description="fp16: overflows tolerated before the scale drops.")
    min_loss_scale: float = Field(1.0, gt=0.0, description="fp16: the scale never drops below this.")
    peak_tflops_per_device: float | None = Field(
        None, gt=0.0, description="Dense bf16/fp16 peak of one device (H100/H200 SXM: 989), for the MFU column; unset on CPU.",
    )
    collective_timeout_minutes: float = Field(30.0, gt=0.0, description="How long a collective (NCCL/gloo) may wait for a rank before the job fails.")
    max_steps_at_min_scale: int = Field(20, ge=1, description="fp16: stop when the scale has sat at its minimum this many steps (an overflow at the minimum stops at once).")


class CommSection(Section):
    """How DeepSpeed moves gradients and parameters between ranks (its zero_optimization and communication keys)."""

    overlap_comm: bool = Field(True, description="Reduce gradient buckets while backward still runs (ZeRO 1/2; ZeRO-3 overlaps anyway).")
    contiguous_gradients: bool = Field(True, description="Copy reduced gradients into one buffer as they arrive (less fragmentation).")
    # 5e7 elements (100 MB in half precision): BERT-base (110M parameters) reduces in about 3 buckets and BERT-large in 7,
    # so buckets overlap with backward; DeepSpeed's own 5e8 is one bucket for a whole base model, i.e. no overlap at all.
    reduce_bucket_size: int = Field(50_000_000, ge=1, description="Elements per gradient reduce bucket.")
    allgather_bucket_size: int = Field(50_000_000, ge=1, description="Elements per parameter all-gather bucket (ZeRO 1/2).")
    data_type: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto", description="Dtype gradients are reduced in. auto: fp32 for bf16 runs (bf16's 8-bit mantissa loses small "
        "gradients when many ranks are summed), the model's dtype otherwise (fp16 runs reduce loss-scaled fp16).",
    )


class CheckpointSection(Section):
    interval: int = Field(100, ge=1, description="Save every this many optimizer steps (and at the end).")
    keep_last: int = Field(3, ge=1, description="Complete checkpoints kept; older ones are deleted.")
    universal_wait_minutes: float = Field(
        120.0, gt=0.0, description="How long ranks other than 0 wait (polling the file system, not in a collective) while rank 0 "
        "converts a checkpoint from another world size or ZeRO stage to DeepSpeed's universal format.",
    )


class EvalSection(Section):
    interval: int = Field(100, ge=1, description="Evaluate on the validation shards every this many optimizer steps (and at the end).")
    samples: int = Field(
        2048, ge=1, description="Validation samples per evaluation: the first N of the split's seed order, the same set whatever "
        "the world size or micro batch (fewer if the split is smaller; said once at start). Split over the ranks.",
    )


class LogSection(Section):
    interval: int = Field(
        10, ge=1, description="Step metrics stay on the device and are read back to the host every this many steps (and before "
        "every checkpoint, evaluation and exit); metrics.jsonl still gets one line per step. Divergence is noticed at that read.",
    )


class SlurmSection(Section):
    """Cluster defaults for `bertline submit`, in one place; the node and GPU counts and the time limit are its flags."""

    launcher: Literal["srun", "deepspeed"] = Field(
        "srun", description="srun: one task per GPU, each runs the trainer; deepspeed: the deepspeed launcher on the first node with a hostfile of the allocation.",
    )
    # 6 cores and 32 GB a rank is 48 cores and 256 GB on an 8-GPU node, which common GPU nodes give (DGX H100: 112
    # cores, 2 TB); a rank needs its loader workers (data.num_workers, 4 in the GPU configs) plus one core of its own.
    cpus_per_task: int = Field(6, ge=1, description="CPU cores per rank (loader workers and the host side); OMP_NUM_THREADS is set to it.")
    mem_per_task_gb: int = Field(32, ge=1, description="Host memory per rank in GB (sbatch --mem is this × tasks per node).")
    cpu_bind: str = Field("cores", description="srun --cpu-bind: each rank on its own cores (none: leave placement to the OS).")
    gpu_bind: str = Field(
        "none", description="srun --gpu-bind with GPUs. none: every rank sees the node's GPUs and takes the one of its local rank, "
        "so NCCL keeps peer-to-peer (NVLink) paths that per-task device cgroups can hide; single:1 where the site wants it (each "
        "rank then uses the one GPU it sees; seeing some but not all is refused, since two ranks would share one).",
    )
    signal_seconds: int = Field(300, ge=10, description="Slurm sends USR1 this long before the time limit; the trainer checkpoints and the job requeues.")
    exit_grace_seconds: int = Field(120, ge=1, description="srun --wait: once one rank exits, the others are killed after this long.")
    env: dict[str, str] = Field(
        default_factory=lambda: {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "1", "NCCL_DEBUG": "WARN", "PYTHONUNBUFFERED": "1"},
        description="Environment of every rank (NCCL: fail instead of hanging when a rank dies).",
    )
    sbatch_options: list[str] = Field(default_factory=list, description="Extra `#SBATCH` lines, e.g. ['--constraint=h100', '--exclusive'].")


class TrainConfig(Section):
    """Everything `bertline train` needs."""

    seed: int = Field(1234, description="Seeds model init, dropout and the data order.")
    run_dir: str = Field("runs/train", description="Run folder: resolved config, DeepSpeed JSON, metrics.jsonl, checkpoints.")
    tensorboard: bool = Field(True, description="Also write TensorBoard scalars to <run_dir>/tensorboard.")
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    optimizer: OptimizerSection = OptimizerSection()
    schedule: ScheduleSection = ScheduleSection()
    train: TrainSection = TrainSection()
    comm: CommSection = CommSection()
    checkpoint: CheckpointSection = CheckpointSection()
    eval: EvalSection = EvalSection()
    log: LogSection = LogSection()
    slurm: SlurmSection = SlurmSection()

    @model_validator(mode="after")
    def _combinations_deepspeed_honours(self) -> "TrainConfig":
        if self.train.precision == "fp16" and self.train.zero_stage == 0:
            raise ValueError("train.precision=fp16 with train.zero_stage=0 trains with wrongly scaled updates in DeepSpeed 0.19 (its PR #8393); use zero_stage >= 1")
        if self.optimizer.name == "lamb" and self.train.zero_stage > 0:
            raise ValueError("optimizer.name=lamb needs train.zero_stage=0: LAMB's layer-wise trust ratio is wrong on ZeRO partitions")
        if self.train.compile and self.train.zero_stage == 3:
            raise ValueError("train.compile with train.zero_stage=3 fails: torch.compile traces ZeRO-3's partitioned (empty) parameters; use zero_stage <= 2 or leave compile off")
        if self.train.offload_optimizer and self.train.zero_stage < 2:
            raise ValueError("train.offload_optimizer needs train.zero_stage 2 or 3")
        return self


def deepspeed_config(config: TrainConfig, world_size: int) -> dict:
    """The DeepSpeed JSON for this run; the batch arithmetic is checked here, before anything starts."""
    train, optimizer = config.train, config.optimizer
    micro, accumulation = config.data.micro_batch_size, train.gradient_accumulation_steps
    global_batch = micro * accumulation * world_size
    if train.global_batch_size is not None and train.global_batch_size != global_batch:
        raise UserError(
            f"train.global_batch_size={train.global_batch_size} but data.micro_batch_size ({micro}) × "
            f"train.gradient_accumulation_steps ({accumulation}) × world size ({world_size}) = {global_batch}; make them agree"
        )
    comm = config.comm
    zero: dict = {"stage": train.zero_stage, "contiguous_gradients": comm.contiguous_gradients,
                  "reduce_bucket_size": comm.reduce_bucket_size}
    if train.zero_stage in (1, 2):
        zero.update(overlap_comm=comm.overlap_comm, allgather_bucket_size=comm.allgather_bucket_size)
    elif train.zero_stage == 3:
        zero["overlap_comm"] = comm.overlap_comm
    if train.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    params = {"lr": optimizer.lr, "betas": list(optimizer.betas), "eps": optimizer.eps, "weight_decay": optimizer.weight_decay}
    if optimizer.name == "adamw" and optimizer.implementation != "deepspeed":
        # DeepSpeed builds torch.optim.AdamW(**params) when torch_adam is set; fused=True is torch's single-kernel step.
        params.update(torch_adam=True, **({"fused": True} if optimizer.implementation == "torch_fused" else {}))
    ds = {
        "train_batch_size": global_batch,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": train.gradient_clipping,
        "zero_optimization": zero,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        "optimizer": {"type": "Lamb" if optimizer.name == "lamb" else "AdamW", "params": params},
    }
    reduce_in = comm.data_type if comm.data_type != "auto" else {"bf16": "fp32"}.get(train.precision)
    if reduce_in is not None:
        ds["communication_data_type"] = reduce_in
    if train.precision == "bf16":
        ds["bf16"] = {"enabled": True}
    elif train.precision == "fp16":
        ds["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": train.initial_scale_power,
                      "loss_scale_window": train.loss_scale_window, "hysteresis": train.hysteresis,
                      "min_loss_scale": train.min_loss_scale}
    return ds
