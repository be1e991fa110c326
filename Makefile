# One-command set-up on a machine with only python3 and make.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast check bench venv clean

$(STAMP): pyproject.toml packages/agent-toolguard/pyproject.toml \
          integrations/langchain/pyproject.toml integrations/starlette/pyproject.toml \
          integrations/openai-agents/pyproject.toml integrations/pydantic-ai/pyproject.toml \
          integrations/mcp/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -e ".[dev,postgres]" -e packages/agent-toolguard \
		-e integrations/langchain -e integrations/starlette \
		-e integrations/openai-agents -e integrations/pydantic-ai -e integrations/mcp
	touch $(STAMP)

venv: $(STAMP)

# The demo's folder: its config (toolguard.yaml), signing key and audit trail; git ignores it.
WORKDIR ?= .toolguard/demo

demo: $(STAMP)
	$(PY) examples/quickstart.py --workdir "$(WORKDIR)"

test: $(STAMP)
	$(PY) -m pytest -q

# The developer loop (the goal: 15 s on two quiet cores): everything but the tests marked slow
# and the PostgreSQL runs, on two workers, each test module (the agent-SDK modules together) on
# one of them (make test and CI run all, on disk; see docs/architecture.md, "The tests"). Its temporary folders (the tests' keys and audit
# databases) are in RAM where there is /dev/shm: the same files, SQLite and fsync calls, without
# waiting for a disk; only the last run's folders are kept. pytest caches its compiled
# (assertion-rewritten) test modules in __pycache__ even where PYTHONDONTWRITEBYTECODE is set.
FAST_TMP ?= $(wildcard /dev/shm)

test-fast: $(STAMP)
	$(if $(FAST_TMP),TMPDIR=$(FAST_TMP)) PYTHONDONTWRITEBYTECODE= \
		$(PY) -m pytest -q -m "not slow and not postgres" -n auto --dist loadfile -o tmp_path_retention_count=1

check: $(STAMP)
	$(PY) -m ruff check toolguard integrations tests examples benchmarks
	$(PY) -m ruff format --check toolguard integrations
	$(PY) -m mypy --strict toolguard integrations/langchain/toolguard_langchain integrations/starlette/toolguard_starlette \
		integrations/openai-agents/toolguard_openai_agents \
		integrations/pydantic-ai/toolguard_pydantic_ai integrations/mcp/toolguard_mcp

bench: $(STAMP)
	$(PY) benchmarks/bench_overhead.py

clean:
	rm -rf $(VENV) .toolguard build *.egg-info
