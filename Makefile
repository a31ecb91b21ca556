# Two entry points: `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: setup demo test bench-accuracy bench-speed clean

setup: $(VENV)/.installed
	bash cluster/local/install_pacs.sh

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -e ".[stack,bench,test]"
	touch $@

demo: setup
	$(BIN)/uae-ray demo

test: setup
	$(BIN)/python -m pytest -q -ra tests

bench-accuracy: setup
	# the default model saw two test patients of parts a and b (they refuse it): d, abstention and e
	$(BIN)/uae-ray bench accuracy --part d --part abstention --part e --baseline identity --max-targets 20 \
	    --out bench-results/accuracy.json

bench-speed: setup
	$(BIN)/uae-ray bench speed --out bench-results/speed.json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
