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

# The developer loop: everything but the tests marked slow, on two workers (make test runs all).
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" -n 2

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
