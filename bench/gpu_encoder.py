"""The encoder alone on one CUDA GPU: training throughput of BertForPreTraining (bf16 autocast, fused
AdamW, sparse MLM head with 20 predictions per sequence, sequence 128), CPU/GPU parity in fp32, and MFU
against the GPU's dense bf16 peak. Needs only torch; a preview of issue #6's bench/gpu_check.sh.

    python bench/gpu_encoder.py [--out DIR] [--peak-tflops 989]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import BertConfig, BertForPreTraining  # noqa: E402

SEQ, PREDICTIONS, VOCAB = 128, 20, 30522


def batch(size: int, device: str, generator: torch.Generator):
    ids = torch.randint(5, VOCAB, (size, SEQ), generator=generator)
    positions = torch.stack([torch.randperm(SEQ - 2, generator=generator)[:PREDICTIONS] + 1 for _ in range(size)])
    labels = torch.gather(ids, 1, positions)
    types = torch.zeros_like(ids)
    types[:, SEQ // 2:] = 1
    nsp = torch.randint(0, 2, (size,), generator=generator)
    return [t.to(device) for t in (ids, types, torch.ones_like(ids), positions, labels, nsp)]


def measure(preset: str, batch_size: int, steps: int, peak: float, compile: bool) -> dict:
    torch.manual_seed(0)
    torch.cuda.reset_peak_memory_stats()
    config = BertConfig.preset(preset, VOCAB, hidden_dropout_prob=0.1)
    model = BertForPreTraining(config).cuda().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    forward = torch.compile(model) if compile else model
    data = batch(batch_size, "cuda", torch.Generator().manual_seed(1))

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = forward(*data[:4], data[4], data[5]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        loss = step()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / steps
    sequences = batch_size / seconds
    tflops = sequences * config.training_flops_per_sequence(SEQ, PREDICTIONS) / 1e12
    return {
        "preset": preset, "compiled": compile, "batch": batch_size, "seconds_per_step": seconds, "sequences_per_s": sequences,
        "tokens_per_s": sequences * SEQ, "model_tflops": tflops, "mfu": tflops / peak, "final_loss": float(loss.detach()),
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30,
    }


def parity() -> dict:
    torch.manual_seed(0)
    config = BertConfig.preset("small", VOCAB, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = BertForPreTraining(config).eval()
    ids, types, mask, positions, labels, nsp = batch(8, "cpu", torch.Generator().manual_seed(2))
    mask[1, 100:] = 0
    with torch.no_grad():
        cpu = model(ids, types, mask, positions).mlm_logits
        torch.backends.cuda.matmul.allow_tf32 = False
        gpu = model.cuda()(*(t.cuda() for t in (ids, types, mask, positions))).mlm_logits.cpu()
    return {"fp32_max_abs_diff_cpu_vs_gpu": float((cpu - gpu).abs().max())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100/H200 SXM: 989)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--compile", action="store_true", help="also measure under torch.compile")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench/gpu_encoder.py: skipped, no CUDA device")
        return 0
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, **parity(), "runs": []}
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}), flush=True)
    torch.backends.cuda.matmul.allow_tf32 = True
    for compile in (False, True) if args.compile else (False,):
        for preset, size in (("base", 256), ("large", 256)):
            run = measure(preset, size, args.steps, args.peak_tflops, compile)
            result["runs"].append(run)
            print(json.dumps(run), flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_encoder.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
