"""`python -m trainer`, with two switches the GPU check and the fp16 tests need and the trainer must never have:

    python bench/gpu_run.py [--inject-inf-at N|always] [--force-fp16-on-cpu] <bertline train arguments…>

--inject-inf-at N   multiply the gradient of the first parameter by inf in the N-th backward pass (an fp16
                    overflow: DeepSpeed must skip that step and lower the loss scale), or in every one
                    (`always`: the scale must fall to its minimum and the run stop in one sentence);
--force-fp16-on-cpu the dry run only: DeepSpeed refuses fp16 on most CPUs (FACTS), so the CPU rehearsal of
                    the fp16 steps tells its accelerator that fp16 is supported, as the tests do.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--inject-inf-at", default=None, help="N (1-based backward pass) or always")
    parser.add_argument("--force-fp16-on-cpu", action="store_true")
    switches, rest = parser.parse_known_args()
    if switches.force_fp16_on_cpu:
        from deepspeed.accelerator import get_accelerator

        get_accelerator().is_fp16_supported = lambda: True
    if switches.inject_inf_at is not None:
        import trainer.engine as engine

        build = engine.build_engine

        def build_with_inf(*args, **kwargs):
            built = build(*args, **kwargs)
            calls = {"n": 0}

            def hook(grad):
                calls["n"] += 1
                hit = switches.inject_inf_at == "always" or calls["n"] == int(switches.inject_inf_at)
                return grad * float("inf") if hit else grad

            next(built.module.parameters()).register_hook(hook)
            return built

        engine.build_engine = build_with_inf
    from trainer.__main__ import main as train

    return train(rest)


if __name__ == "__main__":
    sys.exit(main())
