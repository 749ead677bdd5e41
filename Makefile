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

book: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/hybridspec generate --model tiny/falcon-h1-s --draft component --k 2 \
		--prompt "Question: Tom has 3 apples and buys 5 more. How many apples does he have?\nAnswer:"

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -p no:cacheprovider

clean:
	rm -rf _build results/cache
