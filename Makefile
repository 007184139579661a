# Two commands do all the set-up:  `make demo` (the intent-head example end to end)
# and `make test` (the whole test suite, a short soak included); `make test-fast` is the
# inner loop (the tests not marked slow, cluster or gpu). Each creates .venv first if it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ph-installed

.PHONY: setup demo test test-fast bench soak clean

setup: $(STAMP)

$(STAMP): setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test,encoder,distributed]'
	$(PY) -m pip check  # Jaseci's old pins and the encoder's libraries must agree
	touch $(STAMP)

demo: $(STAMP)
	cd jac_examples/intent_head && $(CURDIR)/$(VENV)/bin/jsctl -m script run.jsctl

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist worksteal tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist worksteal -m "not slow and not cluster and not gpu" tests

bench: $(STAMP)
	$(PY) bench/run_all.py

# Mixed load on `ph serve --workers 2` for 3 minutes, then the invariant checks (JSON out;
# exit status 1 if one broke). `make test` runs it for 20 seconds (tests/e2e/test_soak.py).
soak: $(STAMP)
	$(PY) bench/soak.py --seconds 180 --clients 6

clean:
	rm -rf $(VENV) jac_examples/*/heads jac_examples/*/saved
