# Two entry points: `make demo` runs the main job, `make test` passes the tests.
# Both create .venv and install the project into it on a fresh machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench fuzz clean sysdeps

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[platform,hil,load,web,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fleetrig demo

# Debian packages the tests use: PostgreSQL (the registry on PostgreSQL, its migrations) and
# python3-cryptography (the agent bundle on Debian's own python3). Installed when missing and
# root has apt-get; otherwise the tests that need them skip, naming what is missing.
# ser2net, uuu and e2tools: the lab's consoles over rfc2217, uuu -dry on flash scripts, ext images.
SYSTEM_PACKAGES := postgresql python3-cryptography ser2net uuu e2tools

sysdeps:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing $$missing"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			$$missing >/dev/null) || echo "apt-get could not install $$missing: the tests that need it skip"; \
	else echo "not installed: $$missing (not root, or no apt-get): the tests that need it skip"; fi

test: $(STAMP) sysdeps
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# A longer schemathesis run against the REST API than the one in `make test` (25 examples per
# operation and mode there; ~2 s per 10 examples of every operation on this machine).
fuzz: $(STAMP)
	FLEETRIG_FUZZ_EXAMPLES=$${FLEETRIG_FUZZ_EXAMPLES:-200} $(BIN)/python -m pytest -q tests/test_api_fuzz.py

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python bench/lifecycle.py --devices 1000

# TOUR_FILES: what the README tour writes (also in .gitignore).
TOUR_FILES := out dev web serials.txt web.tar.gz fw.bin manifest.xml signer.key signer.crt

clean:
	rm -rf $(VENV) .reports .fleetrig $(TOUR_FILES)
