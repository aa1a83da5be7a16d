# The two front-door commands: `make demo` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo

.PHONY: install demo test test-fast bench bench-quick bench-prep bench-prep-quick bench-read bench-model bench-scale bench-corpora bench-init-from bench-downstream clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, from the CPU wheel pinned in constraints.txt (GPU users: see README, "GPU clusters").
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt torch
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# prepare → train a tiny BERT with DeepSpeed (2 ranks, ZeRO-2, CPU, gloo) → stop at step 100 → resume → finish at 200
DEMO_TRAIN = $(BIN)/torchrun --nproc_per_node 2 -m trainer --config configs/train/debug_cpu.yaml \
	--data.shards $(DEMO_DIR)/shards --run_dir $(DEMO_DIR)/train --data.micro_batch_size 4
demo: $(STAMP)
	$(BIN)/bertline prepare --config configs/pipeline/demo.yaml --output $(DEMO_DIR)/shards --overwrite
	rm -rf $(DEMO_DIR)/train
	$(DEMO_TRAIN) --stop-after 100
	$(DEMO_TRAIN) --resume auto

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# Every benchmark, a ratio each, into bench/results/<date>.json and bench/README.md (≈ 30 min; quick: a few).
BENCH_STAMP := $(VENV)/.installed-bench
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python bench/run_all.py

bench-quick: $(BENCH_STAMP)
	$(BIN)/python bench/run_all.py --quick

bench-prep: $(STAMP)
	$(BIN)/python bench/prep.py

bench-prep-quick: $(STAMP)
	$(BIN)/python bench/prep.py --quick

bench-read: $(STAMP)
	$(BIN)/python bench/read_shards.py

bench-model: $(STAMP)
	$(BIN)/python bench/model.py

bench-scale: $(STAMP)
	$(BIN)/python bench/scale.py

bench-corpora: $(STAMP)
	$(BIN)/python bench/corpora.py

bench-init-from: $(STAMP)
	$(BIN)/python bench/init_from.py

bench-downstream: $(BENCH_STAMP)
	$(BIN)/python bench/downstream.py

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
