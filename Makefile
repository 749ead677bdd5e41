# Two entry points on a fresh clone:
#   make book   install, run every notebook on the embedded tiny models, build _build/html
#   make test   install, run the unit tests and the notebooks under nbval
# Both install into .venv with the CPU build of torch; see README.md.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: book test install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[book,test]"
	touch $(STAMP)

install: $(STAMP)

# One thread per process: the tiny models run fastest that way on a CPU.
RUN := HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1

book: $(STAMP)
	$(RUN) $(BIN)/python scripts/build_book.py

test: $(STAMP)
	$(RUN) $(BIN)/python -m pytest -q -p no:cacheprovider tests
	$(RUN) $(BIN)/python scripts/nbval_smoke.py
	$(RUN) $(BIN)/python -m pytest -q -p no:cacheprovider --nbval-lax _build/nbval

clean:
	rm -rf _build results/cache
