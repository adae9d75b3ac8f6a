# The two commands of the README. Both create .venv (scripts/setup_env.sh) when needed.
PY := .venv/bin/python

.PHONY: demo test test-slow setup lint

setup:
	bash scripts/setup_env.sh

# A real short KFCPO training on the built-in PointGoalHazard-v0 on a local Ray instance; prints one
# progress line per iteration and writes results/demo/learning_curves.png.
demo: setup
	$(PY) -m rllib_kfcpo.cli.main train file tuned_examples/kfcpo/demo-point-goal-hazard.yaml \
		--storage-path $(CURDIR)/results --plot

# Lint, then the test suite (slow learning runs are skipped; `make test-slow` runs them).
test: setup
	$(PY) -m ruff check rllib_kfcpo tests bench examples
	$(PY) -m pytest -q

test-slow: setup
	RUN_SLOW=1 $(PY) -m pytest -q -m slow

lint: setup
	$(PY) -m ruff check rllib_kfcpo tests bench examples
