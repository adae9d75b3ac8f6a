#!/usr/bin/env bash
# Submit an rllib-kfcpo training to a Ray cluster as a Ray job.
#
#   cluster/submit_job.sh ADDRESS -- rllib train file tuned_examples/kfcpo/safety-point-goal1.yaml
#
# ADDRESS is the job API of the head (http://127.0.0.1:8265 through an SSH tunnel or a
# `kubectl port-forward`; the dashboard is never exposed on a public interface).
# Token authentication (Ray's default, RAY_AUTH_MODE=token) stays on: the token is read
# from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token on this machine. Copy it
# from the head once with `ray exec cluster/aws-gpu-learners.yaml 'ray get-auth-token'`.
# The repository (package + tuned examples) ships with the job as its working dir; the cluster's image/setup
# commands install its dependencies (see cluster/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 3 ] || [ "$2" != "--" ]; then
  echo "usage: $0 ADDRESS -- COMMAND..." >&2
  exit 2
fi
address=$1
shift 2
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
if [ "$1" = "rllib" ]; then
  shift
  set -- python -m rllib_kfcpo.cli.main "$@"
fi
exec "${RAY:-ray}" job submit --address "$address" \
  --runtime-env-json '{"working_dir": ".", "excludes": [".venv", ".git", "results", "*.png"], "env_vars": {"PYTHONUNBUFFERED": "1"}}' \
  -- "$@"
