# Everything a fresh machine needs, in two commands: `make demo` and `make test`.
PYTHON ?= python
OUT ?= demo_output
SCENARIO ?= OPclass

.PHONY: install demo demo-quick test test-heavy bench

install:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -r requirements.txt

demo: install
	$(PYTHON) tools/demo/run_demo.py --out $(OUT) --scenario $(SCENARIO)

demo-quick: install
	$(PYTHON) tools/demo/run_demo.py --quick --out $(OUT)_quick --scenario $(SCENARIO)

test: install
	$(PYTHON) -m pytest

test-heavy: install
	$(PYTHON) -m pytest -m heavy

bench: install
	$(PYTHON) tools/benchmark/run_all.py
