#!/usr/bin/env bash
# Build PASCAL VOC 2012 aug (VOC 2012 + SBD) in DEST; see docs/VOC.md.
#
#   scripts/voc2012/prepare.sh DEST --download
#   scripts/voc2012/prepare.sh DEST --voc-tar VOCtrainval_11-May-2012.tar --sbd-tgz benchmark.tgz
#
# Runs `python -m tools.prepare_voc --dest DEST ...` from the repository root (PYTHON overrides the
# interpreter, else the repository's .venv when no environment is active). DEST, --voc-tar, --sbd-tgz and
# PYTHON may be relative to the directory you run it from.
set -euo pipefail

# The script cds to the repo root so `-m tools.prepare_voc` resolves; relative paths must not change meaning.
abspath() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }

usage="usage: $0 DEST [--download] [--voc-tar PATH] [--sbd-tgz PATH] [--skip-md5] [--workers N]"
# PYTHON, else an activated environment's python, else the repository's .venv (make venv), else python
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
python=${PYTHON:-}
if [ -z "$python" ]; then
    python=python
    if [ -z "${VIRTUAL_ENV:-}${CONDA_PREFIX:-}" ] && [ -x "$repo/.venv/bin/python" ]; then python=$repo/.venv/bin/python; fi
fi
case "$python" in */*) python=$(abspath "$python") ;; esac
if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then  # the usage line, then every option of tools.prepare_voc
    echo "$usage"
    cd "$repo"
    exec "$python" -m tools.prepare_voc --help
fi
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
    echo "$usage" >&2
    exit 2
fi

dest=$(abspath "$1")
shift
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --voc-tar | --sbd-tgz)
            [ $# -ge 2 ] || { echo "error: $1 needs a path" >&2; exit 2; }
            args+=("$1" "$(abspath "$2")")
            shift 2
            ;;
        --voc-tar=* | --sbd-tgz=*)
            args+=("${1%%=*}=$(abspath "${1#*=}")")
            shift
            ;;
        *)
            args+=("$1")
            shift
            ;;
    esac
done

cd "$repo"
exec "$python" -m tools.prepare_voc --dest "$dest" ${args[@]+"${args[@]}"}
