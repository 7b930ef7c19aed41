# The two Quickstart commands: `make demo` (sets up, then runs the offline tour) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test bench fuzz clean

$(STAMP): requirements/ci.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements/ci.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tihub --home demo-home demo

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -n 2 --dist loadfile

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

# Coverage-guided fuzzing (atheris) of every reader of untrusted bytes, FUZZ_SECONDS per target;
# a finding (an exception that is not tihub's own, or a read over the memory budget) is saved
# as .fuzz/crash-* and stops the run. `make test` runs a short hypothesis smoke of the same targets.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= pickle_vm zip_container torch_zip safetensors_header png_chunks png_pixels infotext sources_yaml links_page
fuzz: $(STAMP)
	mkdir -p .fuzz
	for t in $(FUZZ_TARGETS); do \
		HF_HUB_OFFLINE=1 $(PY) fuzz/run.py $$t -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -artifact_prefix=.fuzz/ || exit 1; \
	done

clean:
	rm -rf demo-home .pytest_cache build *.egg-info .fuzz
