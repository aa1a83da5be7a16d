"""The `bertline` command: one entry point, one subcommand per stage of the product."""

from __future__ import annotations

import sys

USAGE = """usage: bertline <command> [options]

commands:
  prepare   corpus files → balanced WebDataset shards of BERT samples (an Apache Beam job)
  train     pretrain BERT on those shards with DeepSpeed (ZeRO 0-3; torchrun, deepspeed or srun)
  submit    a training run as a Slurm batch job (srun or deepspeed launch, preemption → requeue → resume)
  export    a training checkpoint → a HuggingFace BERT folder
  finetune  fine-tune a checkpoint (or HuggingFace BERT folder) on labelled text: classification, pairs, tagging
  eval      held-out MLM/NSP loss and accuracy of a checkpoint (or HuggingFace folder) on a shard folder
  verify    check every shard, index and record of a shard folder against its manifest
  inspect   a shard folder's data card (NSP balance, [UNK] rate, lengths, counters) and samples decoded to text

Run `bertline <command> --help` for a command's options."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "prepare":
        from pipeline.__main__ import main as prepare

        return prepare(rest)
    if command == "eval":
        from trainer.evaluate import main as evaluate

        return evaluate(rest)
    if command == "finetune":
        from finetune.__main__ import main as finetune

        return finetune(rest)
    if command == "export":
        from trainer.export import main as export

        return export(rest)
    if command == "inspect":
        from shardformat.cli import inspect_main

        return inspect_main(rest)
    if command == "verify":
        from shardformat.cli import verify_main

        return verify_main(rest)
    if command == "submit":
        from cluster.submit import main as submit

        return submit(rest)
    if command == "train":
        from trainer.__main__ import main as train

        return train(rest)
    print(f"bertline: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
