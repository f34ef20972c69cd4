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

usage="usage: $0 DEST [--download] [--voc-tar PATH] [--sbd-tgz PATH] [--skip-md5] [--workers N]"
# The interpreter as the table scripts pick it, and segkd_abspath: the script cds to the repo root so
# `-m tools.prepare_voc` resolves, and relative paths must not change meaning (scripts/table.sh).
source "$(dirname "${BASH_SOURCE[0]}")/../table.sh"
repo=$SEGKD_ROOT python=$(segkd_python)
case "$python" in */*) python=$(segkd_abspath "$python") ;; esac
if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then  # the usage line, then every option of tools.prepare_voc
    echo "$usage"
    cd "$repo"
    exec "$python" -m tools.prepare_voc --help
fi
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
    echo "$usage" >&2
    exit 2
fi

dest=$(segkd_abspath "$1")
shift
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --voc-tar | --sbd-tgz)
            [ $# -ge 2 ] || { echo "error: $1 needs a path" >&2; exit 2; }
            args+=("$1" "$(segkd_abspath "$2")")
            shift 2
            ;;
        --voc-tar=* | --sbd-tgz=*)
            args+=("${1%%=*}=$(segkd_abspath "${1#*=}")")
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
