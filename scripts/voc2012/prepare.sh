#!/usr/bin/env bash
# Build PASCAL VOC 2012 aug (VOC 2012 + SBD) in DEST; see docs/VOC.md.
#
#   scripts/voc2012/prepare.sh DEST --download
#   scripts/voc2012/prepare.sh DEST --voc-tar VOCtrainval_11-May-2012.tar --sbd-tgz benchmark.tgz
#
# Runs `python -m tools.prepare_voc --dest DEST ...` from the repository root (PYTHON overrides the
# interpreter). DEST, --voc-tar, --sbd-tgz and PYTHON may be relative to the directory you run it from.
set -euo pipefail

# The script cds to the repo root so `-m tools.prepare_voc` resolves; relative paths must not change meaning.
abspath() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }

usage="usage: $0 DEST [--download] [--voc-tar PATH] [--sbd-tgz PATH] [--skip-md5] [--workers N]"
python=${PYTHON:-python}
case "$python" in */*) python=$(abspath "$python") ;; esac
if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then  # the usage line, then every option of tools.prepare_voc
    echo "$usage"
    cd "$(dirname "${BASH_SOURCE[0]}")/../.."
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

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
exec "$python" -m tools.prepare_voc --dest "$dest" ${args[@]+"${args[@]}"}
