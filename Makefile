# dicomflow — `make run` starts the pipeline, `make test` runs every test. Both set themselves up.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test test-fast fuzz bench soak lint fmt clean emulators viewer

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)  ## start Redis and the five services (Ctrl-C stops all)
	$(PY) scripts/run.py

emulators: $(STAMP)  ## moto, Azurite, the GCS emulator and Orthanc for the cloud targets
	$(PY) scripts/emulators.py

viewer: $(STAMP)  ## the OHIF viewer from npm into .cache/ohif, for the gateway's /viewer/
	$(PY) scripts/fetch_viewer.py

test: lint  ## lint, then unit, integration and end-to-end tests
	$(PY) -m pytest -p no:cacheprovider $(PYTEST_ARGS)

test-fast: $(STAMP)  ## unit tests only
	$(PY) -m pytest -p no:cacheprovider tests/unit $(PYTEST_ARGS)

fuzz: $(STAMP)  ## the long fuzz run: 10,000+ mutated inputs, then every API operation (tests/fuzz)
	FUZZ_PROFILE=fuzz $(PY) -m pytest -p no:cacheprovider tests/fuzz -o timeout=3600 \
		--hypothesis-show-statistics $(PYTEST_ARGS)

bench: $(STAMP)  ## throughput, latency and memory table
	$(PY) bench/bench.py

soak: $(STAMP)  ## 1,000 uploads while services are SIGKILLed every 2 s and Redis once
	$(PY) bench/soak.py

PACKAGES := shared api-gateway/api_gateway validator-service/validator_service \
	descriptor-service/descriptor_service uploader-service/uploader_service \
	status-service/status_service dimse-service/dimse_service cli/dicomflow_cli testbed

lint: $(STAMP)  ## ruff and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy $(PACKAGES)

fmt: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) data .pytest_cache
