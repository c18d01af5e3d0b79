#!/usr/bin/env bash
# Sets up .venv/ (scripts/setup.sh --features, so the extractor tests run on real weights)
# and runs the test suite. Fails when no test ran.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --features || exit 1
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
# Two worker processes, each test file in one of them (module fixtures are built once).
.venv/bin/python -m pytest -n 2 --dist loadfile tests "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
