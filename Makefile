# qboot-systemd: `make run` prints the units the generator makes of the shipped bootctrl,
# `make test` runs the tests.
# Both install what is missing first (Debian packages as root, then the venv from uv.lock).
VENV := .venv
BOOTCTRL ?= etc/bootctrl
PYTEST_ARGS ?=

.PHONY: run test lint bench clean

run:
	@scripts/setup.sh run
	@status=0; $(VENV)/bin/qbootctl generate --bootctrl $(BOOTCTRL) || status=$$?; \
	if [ $$status -eq 1 ]; then \
	    echo "make run: units generated; the problems above are the model's (qmail's users," \
	         "such as qmaild, exist only once qmail is installed)" >&2; \
	elif [ $$status -ne 0 ]; then exit $$status; fi

test:
	@scripts/setup.sh test
	@status=0; $(VENV)/bin/pytest $(PYTEST_ARGS) || status=$$?; \
	if [ $$status -eq 5 ]; then \
	    echo "pytest: no tests collected" >&2; \
	    if [ -n "$$QBOOT_STRICT_SKIPS" ]; then exit 1; else exit 0; fi; \
	fi; exit $$status

lint:
	@scripts/setup.sh test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy --strict qboot_systemd

bench:
	@scripts/setup.sh test
	$(VENV)/bin/python bench/rules_bench.py
	$(VENV)/bin/python bench/generator_bench.py
	$(VENV)/bin/python bench/tcpsrv_bench.py
	$(VENV)/bin/python bench/rbl_bench.py
	$(VENV)/bin/python bench/tls_bench.py
	$(VENV)/bin/python bench/soak.py

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache
