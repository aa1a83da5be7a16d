"""`python -m pipeline` / `bertline prepare`: corpus files → balanced WebDataset shards of BERT samples.

    bertline prepare --input 'corpus/*.txt' --output shards/ [--config configs/pipeline/default.yaml]
        [--pairs.max_seq_length 128 …] [Beam flags: --runner … --direct_num_workers 2 …]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import numpy as np

from bertline.config import load_config, parse_overrides
from bertline.errors import UserError, find_user_error, run_command
from pipeline.config import PrepareConfig

log = logging.getLogger("bertline.pipeline")
DEFAULT_RUNNER = "FnApiRunner"


def default_corpus() -> str:
    """CPython's pydoc topics written as a BERT-format corpus (real prose present on every machine)."""
    from pydoc_data.topics import topics

    from pipeline.segment import normalize_line

    cache = Path.home() / ".cache" / "bertline"
    path = cache / f"pydoc_topics-{sys.version_info.major}.{sys.version_info.minor}.txt"
    documents = []
    for name in sorted(topics):
        paragraphs = []
        for block in topics[name].split("\n\n"):
            if "::=" in block or ">>>" in block:
                continue  # grammar rules and interactive examples
            text = normalize_line(" ".join(line.strip() for line in block.split("\n")))
            # Prose is mostly letters and spaces; code, tables and title underlines are not.
            if len(text.split()) >= 6 and sum(c.isalpha() or c == " " for c in text) >= 0.85 * len(text):
                paragraphs.append(text)
        if paragraphs:
            documents.append("\n".join(paragraphs))
    text = "\n\n".join(documents) + "\n"
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        cache.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return str(path)


def code_revision() -> str:
    """The git commit of this checkout (with -dirty for local edits), or the package version."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        from bertline import __version__

        return f"bertline-{__version__}"


def _names(folder: str) -> dict[str, str]:
    """File and folder names directly in `folder` → their full paths."""
    from apache_beam.io.filesystems import FileSystems

    present = [m.path for m in FileSystems.match([FileSystems.join(folder, "*")])[0].metadata_list]
    return {path.rstrip("/").rsplit("/", 1)[-1]: path for path in present}


def prepare_output(output: str, overwrite: bool) -> str:
    """Check --output and return the staging folder the job writes into (`<output>/_staging`).

    Refuses a folder holding a finished run (unless overwrite) or files bertline did not write, and checks that
    it is writable. Nothing of an earlier run is deleted here: the new output replaces it only once complete
    (`swap_into`), so a failed or killed job leaves the previous output as it was."""
    from apache_beam.io.filesystems import FileSystems

    from pipeline import write

    try:
        if "://" not in output:
            Path(output).mkdir(parents=True, exist_ok=True)
        names = _names(output)
    except Exception as exc:  # OSError, or Beam's BeamIOError around it
        raise UserError(f"output folder {output} is not writable ({exc.__class__.__name__}); choose another --output or fix its permissions") from None
    foreign = sorted(name for name in names if not write.is_output_name(name))
    if foreign:
        raise UserError(
            f"output folder {output} holds files bertline did not write ({', '.join(foreign[:3])}"
            f"{', …' if len(foreign) > 3 else ''}); choose an empty or new --output"
        )
    if write.COMPLETED in names and not overwrite:
        raise UserError(f"output folder {output} already holds a completed run; pass --overwrite to replace it or choose another --output")
    staging = FileSystems.join(output, write.STAGING)
    try:
        remove_tree(staging)  # left by a killed job
        probe = FileSystems.join(output, ".bertline-write-probe")
        with FileSystems.create(probe) as handle:
            handle.write(b"ok")
        FileSystems.delete([probe])
    except Exception as exc:  # OSError, or Beam's BeamIOError around it
        raise UserError(f"output folder {output} is not writable ({exc.__class__.__name__}); choose another --output or fix its permissions") from None
    return staging


def remove_tree(folder: str) -> None:
    """Delete a folder bertline wrote (staging, scratch) and everything in it, if it exists."""
    import shutil

    from apache_beam.io.filesystems import FileSystems

    if "://" not in folder:
        shutil.rmtree(folder, ignore_errors=True)
        return
    files = [m.path for m in FileSystems.match([FileSystems.join(folder, "**")])[0].metadata_list]
    if files:
        FileSystems.delete(files)


def swap_into(output: str, staging: str) -> None:
    """Replace the previous run in `output` with the complete one in `staging`: the old marker goes first, the
    new one comes last, so a reader never sees a marker over a mix of the two."""
    from apache_beam.io.filesystems import FileSystems

    from pipeline import write

    old = {name: path for name, path in _names(output).items() if name not in (write.STAGING,)}
    if write.COMPLETED in old:
        FileSystems.delete([old.pop(write.COMPLETED)])
    if old:
        FileSystems.delete(list(old.values()))
    new = sorted(_names(staging).items(), key=lambda item: (item[0] == write.COMPLETED, item[0] == write.MANIFEST, item[0]))
    for name, path in new:
        FileSystems.rename([path], [FileSystems.join(output, name)])
    remove_tree(staging)


def check_beam_flags(beam_args: list[str]) -> list[str]:
    """Beam's flags with the default runner added; a flag no Beam option knows is a UserError, because Beam
    itself only logs it and runs on (a mistyped --inputs would silently train on the built-in corpus)."""
    import importlib

    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    options = PipelineOptions(beam_args)
    runner = options.view_as(StandardOptions).runner
    if runner is None:
        beam_args = [f"--runner={DEFAULT_RUNNER}", *beam_args]
        runner = DEFAULT_RUNNER
    elif "." in runner:
        # A runner given by module path registers its own options (the DaskRunner's --dask_client_address).
        module = runner.rsplit(".", 1)[0]
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise UserError(f"--runner={runner} cannot be imported ({exc}); install the runner's extra or check the name") from None
    logger = logging.getLogger("apache_beam.options.pipeline_options")
    level = logger.level
    logger.setLevel(logging.ERROR)  # the check below replaces Beam's "Discarding unparseable args" warning
    try:
        with_unknown = PipelineOptions(beam_args).get_all_options(retain_unknown_options=True)
        known = PipelineOptions(beam_args).get_all_options(retain_unknown_options=False)
    finally:
        logger.setLevel(level)
    unknown = sorted(set(with_unknown) - set(known))
    if unknown:
        raise UserError(
            f"unknown option --{unknown[0]}: it is neither a bertline flag (--input, --output, --config, --overwrite, "
            f"--section.key) nor an option of Beam's {runner}; check its spelling"
        )
    return beam_args


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, PrepareConfig, list[str]]:
    overrides, rest = parse_overrides(argv, PrepareConfig)
    parser = argparse.ArgumentParser(
        prog="bertline prepare", allow_abbrev=False,
        description="Corpus files → balanced, byte-reproducible WebDataset shards of BERT pretraining samples. "
        "Config keys are overridden as --section.key VALUE; other flags go to Beam's PipelineOptions.",
    )
    parser.add_argument("--input", action="append", default=[], help="A file or glob (.txt/.jsonl/.parquet, optionally .gz); repeatable. Default: CPython's pydoc topics.")
    parser.add_argument("--output", required=True, help="The folder to write shards, manifest.json and COMPLETED into.")
    parser.add_argument("--config", default=None, help="A YAML config (see configs/pipeline/).")
    parser.add_argument("--overwrite", action="store_true", help="Replace a folder that already holds a completed run.")
    parser.add_argument("--slurm-workers", type=int, default=0, metavar="K",
                        help="Run on Beam's DaskRunner over K Dask workers started as Slurm jobs (shape: --dask_slurm.*).")
    args, beam_args = parser.parse_known_args(rest)
    if args.slurm_workers < 0:
        raise UserError(f"--slurm-workers {args.slurm_workers}: give a number of worker jobs (at least 1), or leave it out")
    if args.slurm_workers and any(arg.startswith("--runner") for arg in beam_args):
        raise UserError("--slurm-workers chooses the runner (Beam's DaskRunner on Slurm); drop --runner, or drop --slurm-workers")
    config = load_config(PrepareConfig, args.config, overrides)
    return args, config, check_beam_flags(beam_args)


def read_tokenizer_file(config: PrepareConfig) -> bytes | None:
    """The given tokenizer file's bytes, validated on the driver; None when the job trains one."""
    from apache_beam.io.filesystems import FileSystems

    from pipeline import tokenizer

    if config.tokenizer.kind == "sentencepiece_train":
        return None
    path = config.tokenizer.path
    try:
        with FileSystems.open(path) as handle:
            data = handle.read()
    except Exception as exc:
        raise UserError(f"tokenizer file {path} cannot be read ({exc.__class__.__name__}); check tokenizer.path") from None
    kind = "wordpiece" if config.tokenizer.kind == "wordpiece" else "sentencepiece"
    tokenizer.load_tokenizer(kind, data, config.tokenizer.lowercase, source=f"tokenizer file {path}")
    return data


def build(pipeline, plan, ranges, given_tokenizer: bytes | None):
    """Wire the job. Element shapes are noted above each PCollection."""
    import apache_beam as beam

    from pipeline import tokenizer, transforms

    # (range index, InputRange): one file or byte range of a file. reshuffle=True spreads the ranges over
    # workers; without it they share one bundle and the tokenizer's sampling pass reads on one worker.
    inputs = pipeline | "PlanInputs" >> beam.Create(list(enumerate(ranges)), reshuffle=True)
    if given_tokenizer is None:
        # (tokenizer file name, sha256), once the trained model is in the output folder
        ready = inputs | "TrainSentencePiece" >> transforms.TrainSentencePiece(plan)
    else:
        ready = pipeline | "GivenTokenizer" >> beam.Create(
            [(plan.tokenizer_file, tokenizer.file_sha256(given_tokenizer))], reshuffle=False
        )
    # (split, BucketSummary): what each bucket spilled into the scratch folder
    summaries = inputs | "MakeSamples" >> transforms.MakeSamples(plan, ready, len(ranges))
    # the manifest's per-split summary (one element)
    return summaries | "WriteShards" >> transforms.WriteShards(plan)


def print_counters(counters: dict[str, int], heading: str = "counters:") -> None:
    print(heading)
    for name in sorted(counters):
        print(f"  {name:36s} {counters[name]:>14,}")


SMALL_CORPUS_BYTES = 64 << 20  # up to this much input, the driver counts documents before the job starts


def validation_fraction(config: PrepareConfig, ranges: list, total_bytes: int) -> float:
    """output.validation_fraction, or on a small corpus the fraction that holds out min_validation_documents.

    Documents are held out by a hash of their text (shardformat.rng.is_held_out), so the driver can find,
    before any expensive stage, how many a fraction holds out, and the smallest fraction that holds out
    enough: the k-th smallest hash. Larger corpora hold out plenty at any sensible fraction; reading them
    twice would cost more than it saves."""
    from pipeline import read, segment
    from shardformat import rng

    wanted, fraction = config.output.min_validation_documents, config.output.validation_fraction
    if fraction == 0 or total_bytes > SMALL_CORPUS_BYTES:
        return fraction
    cfg, normalize = config.input, config.normalize
    scores = []
    for input_range in ranges:
        for document in read.read_documents(input_range, cfg.encoding, cfg.text_field, cfg.text_column, lambda _: None,
                                            max_document_chars=cfg.max_document_chars):
            sentences = [s for line in document.lines
                         for s in segment.split_sentences(segment.normalize_line(line, normalize.nfkc), normalize.max_sentence_chars)]
            if sentences:
                scores.append(rng.unit_interval(config.seed, "split", "\n".join(sentences)))
    if not scores:
        raise UserError(f"the input ({', '.join(sorted({r.path for r in ranges})[:3])}) holds no text; check --input")
    held = sum(score < fraction for score in scores)
    # A corpus of few, long documents (books) holds out fewer: at most an eighth of them, and at least one
    # (pairs come from parts of a document, so one book still gives both NSP labels).
    wanted = max(1, min(wanted, len(scores) // 8))
    if held >= wanted:
        return fraction
    if len(scores) < 2:
        raise UserError(
            f"the corpus has only {len(scores)} document: too few to hold one out for validation and train on the rest; "
            f"set output.validation_fraction 0 (no validation set) or give more input"
        )
    raised = float(np.nextafter(sorted(scores)[wanted - 1], 1.0))
    log.info("validation: %d of the corpus's %d documents fall under output.validation_fraction=%g; holding out %d "
             "(output.min_validation_documents, at most an eighth of the documents) with the fraction %.4f",
             held, len(scores), fraction, wanted, raised)
    return raised


@dataclasses.dataclass(frozen=True)
class Prepared:
    """What a finished job wrote: the output folder and its manifest."""

    output: str
    manifest: dict


def run(argv: list[str]) -> Prepared:
    """Run the job; returns the output folder and the manifest written there."""
    args, config, beam_args = parse_args(argv)
    with contextlib.ExitStack() as resources:
        return _run(args, config, beam_args, resources)


def _run(args: argparse.Namespace, config: PrepareConfig, beam_args: list[str], resources: contextlib.ExitStack) -> Prepared:
    import apache_beam as beam
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline import read, transforms, write

    if not args.input:
        log.info("no --input given: using the built-in corpus (CPython's pydoc topics)")
    patterns = args.input or [default_corpus()]
    ranges, described = read.plan_inputs(patterns, config.input.split_bytes)
    given_tokenizer = read_tokenizer_file(config)
    staging = prepare_output(args.output, args.overwrite)
    total_bytes = sum(f["bytes"] for f in described)
    held_out = validation_fraction(config, ranges, total_bytes)
    if args.slurm_workers:  # only now that the inputs and the output are known to be good, queue worker jobs
        from pipeline.dask_slurm import DASK_RUNNER, slurm_cluster

        address = resources.enter_context(slurm_cluster(args.slurm_workers, config.dask_slurm))
        beam_args = [arg for arg in beam_args if not arg.startswith("--runner=")]  # the default runner was added
        beam_args += [f"--runner={DASK_RUNNER}", f"--dask_client_address={address}"]
    from apache_beam.options.pipeline_options import StandardOptions

    runner = PipelineOptions(beam_args).view_as(StandardOptions).runner
    plan = transforms.JobPlan(
        config=config,
        output=staging,
        num_buckets=max(1, math.ceil(total_bytes / config.pairs.bucket_bytes)),
        total_input_bytes=total_bytes,
        tokenizer_kind="wordpiece" if config.tokenizer.kind == "wordpiece" else "sentencepiece",
        tokenizer_file="vocab.txt" if config.tokenizer.kind == "wordpiece" else "spm.model",
        validation_fraction=held_out,
        inputs=tuple(described),
        code_revision=code_revision(),
        show_progress=runner == DEFAULT_RUNNER and sys.stderr.isatty(),
    )
    log.info("reading %d files (%d ranges, %.1f MB) into %s", len(described), len(ranges), total_bytes / 1e6, args.output)
    try:
        pipeline = beam.Pipeline(options=PipelineOptions(beam_args))
        if given_tokenizer is not None:
            write.write_atomically(FileSystems.join(staging, plan.tokenizer_file), given_tokenizer)
        build(pipeline, plan, ranges, given_tokenizer)
        result = pipeline.run()
        try:
            result.wait_until_finish()
        finally:
            client = getattr(result, "client", None)  # the DaskRunner leaves its client open
            if client is not None:
                client.close()
        if not FileSystems.exists(FileSystems.join(staging, write.COMPLETED)):
            raise UserError(f"the job finished but {staging} has no COMPLETED marker; the runner dropped the final step (see docs/runners.md)")
    except BaseException:
        # The counters so far say what the job met before it stopped; the previous output stays as it was.
        counters = transforms.read_counters(staging)
        if counters:
            print_counters(counters, "counters before the job stopped:")
        try:
            remove_tree(staging)
        except Exception as exc:
            log.warning("could not remove %s (%s); delete it by hand: it holds the failed job's scratch files", staging, exc)
        raise
    swap_into(args.output, staging)
    with FileSystems.open(FileSystems.join(args.output, write.MANIFEST)) as handle:
        manifest = json.loads(handle.read())
    print_counters(manifest["counters"])
    return Prepared(args.output, manifest)


def summary(output: str, manifest: dict) -> str:
    lines = [f"shards:   {output}", f"manifest: {output.rstrip('/')}/manifest.json"]
    tok = manifest["tokenizer"]
    lines.append(f"tokenizer: {tok['kind']} {tok['file']} (vocab {tok['vocab_size']:,}, sha256 {tok['sha256'][:12]})")
    for split, info in manifest["splits"].items():
        lines.append(
            f"{split:10s} {info['shards']} shards × {info['samples_per_shard']:,} samples = {info['samples']:,} "
            f"({info['tokens']:,} tokens, {info['masked_tokens']:,} masked, {info['random_next']:,} random-next; "
            f"remainder dropped: {info['dropped_remainder']})"
        )
    lines += nsp_warnings(manifest)
    lines.append(f"data card: bertline inspect {output} [--samples N]")
    return "\n".join(lines)


def nsp_warnings(manifest: dict) -> list[str]:
    """One sentence per split whose random-next share misses pairs.random_next_prob by more than 0.01: a corpus
    too small, or of too few documents, to give balanced NSP pairs."""
    wanted = manifest["config"]["pairs"]["random_next_prob"]
    unavailable = manifest.get("counters", {}).get("random_next_unavailable", 0)
    warnings = []
    for split, info in manifest["splits"].items():
        share = info.get("nsp_random_next_fraction")
        if share is not None and abs(share - wanted) > 0.01:
            reason = (f"{unavailable:,} random-next draws found no other document in their bucket: the corpus has too few "
                      f"documents (or one without blank lines that is too short to pair in parts)" if unavailable else
                      "the split is too small for the share to settle")
            warnings.append(f"warning: the {split} split's random-next share is {share:.3f}, not {wanted}: {reason}; "
                            f"NSP on these samples is unbalanced (add documents, or give pairs.random_next_prob 0 to train MLM only)")
    return warnings


class _HideUserErrorTracebacks(logging.Filter):
    """Beam logs a worker's exception with its traceback before re-raising it; for a UserError the
    command line prints the one sentence instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and find_user_error(exc) is not None:
            return False
        # Beam's import-time notice about optional Google Cloud clients says nothing to a bertline user.
        return not str(record.msg).startswith("apitools not found")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_HideUserErrorTracebacks())
    log.setLevel(logging.INFO)

    def body() -> int:
        prepared = run(argv)
        print(summary(prepared.output, prepared.manifest))
        return 0

    return run_command("bertline prepare", body)


if __name__ == "__main__":
    sys.exit(main())
