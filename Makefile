# Two commands a newcomer needs: `make demo` and `make test`. Each builds its
# own virtual environment in .venv first (PYTHON picks the interpreter, 3.10+).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: demo test docs benchmarks clean

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

# The API reference, built from the docstrings, and the guides (README.md, docs/*.md) as HTML in
# docs/_build/html/; any warning fails the build (tests/docs/test_build.py runs the same build).
# Sphinx with autodoc and MyST rather than pydoctor, Twisted's API tool: pydoctor makes API pages
# only, and the guides are Markdown, which MyST renders as they are; autodoc reads the
# reStructuredText docstrings (``literals``, :class: roles) natively. The one thing pydoctor has
# built in, zope.interface interfaces (IBackend), is docs/_ext/zope_interfaces.py, 50 lines.
docs: $(VENV)/.installed
	rm -rf docs/_build
	$(PY) -m sphinx -W --keep-going -b html docs docs/_build/html
	@echo "open docs/_build/html/index.html"

benchmarks: $(VENV)/.installed
	$(PY) benchmarks/run.py all

clean:
	rm -rf $(VENV) build dist *.egg-info docs/_build .compat
