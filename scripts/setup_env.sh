#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install everything.
# safety-gymnasium 1.0.0 declares pins that conflict with ray[rllib] 2.60 (gymnasium 0.28,
# pygame 2.1, mujoco 2.3.3), so it is installed with --no-deps in its own step; the
# dependencies it really needs are declared in pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
stamp="$VENV/.installed-$(cat pyproject.toml scripts/setup_env.sh | sha1sum | cut -c1-12)"
if [ -f "$stamp" ]; then
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch first, from the exact release so pip never pulls a multi-GB CUDA build by itself.
"$VENV/bin/python" -m pip install -q "torch==2.13.0" || "$VENV/bin/python" -m pip install -q "torch>=2.4,<2.15"
"$VENV/bin/python" -m pip install -q -e ".[test,plot,cluster,video]"
"$VENV/bin/python" -m pip install -q --no-deps "safety-gymnasium==1.0.0"
rm -f "$VENV"/.installed-*
touch "$stamp"
