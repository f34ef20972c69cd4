#!/usr/bin/env bash
# Install the lowest versions the requirements allow (scripts/floors.txt) into a venv of its own and run the fast
# test tier there: whether the floors of requirements.txt are real is measured, not assumed.
#
#   scripts/check_floors.sh                       # venv in .venv-floors (reused if it exists)
#   VENV=/tmp/floors PYTHON=python3.11 scripts/check_floors.sh -x    # extra arguments go to pytest
#
# About 3 GB of downloads: torch's PyPI wheel pulls the CUDA libraries even for a CPU-only machine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv-floors}

test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet --only-binary=:all: -r scripts/floors.txt
"$VENV/bin/python" -m pip check
echo "floors installed in $VENV ($("$VENV/bin/python" --version)):"
"$VENV/bin/python" -m pip freeze | grep -iE "^($(sed -E -n 's/^([A-Za-z0-9_.-]+)==.*/\1/p' scripts/floors.txt | paste -sd'|'))=="
"$VENV/bin/python" -m pytest -q -m "not slow" -p no:cacheprovider "$@"
