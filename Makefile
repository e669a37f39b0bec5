# Two commands a newcomer needs: `make demo` and `make test`. Each builds its
# own virtual environment in .venv first (PYTHON picks the interpreter, 3.10+).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: demo test benchmarks clean

$(VENV)/.installed: setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("Python 3.10 or newer is needed, this is " + sys.version.split()[0]) if sys.version_info < (3, 10) else None'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --config-settings editable_mode=compat -e '.[test]'
	@touch $@

demo: $(VENV)/.installed
	$(PY) -m examples.chat

test: $(VENV)/.installed
	$(PY) -m pytest $(PYTEST_ARGS)

benchmarks: $(VENV)/.installed
	$(PY) benchmarks/run.py all

clean:
	rm -rf $(VENV) build dist *.egg-info
