#!/usr/bin/env bash
# Copy a table's per-run metrics.json files (and each run's resolved config.yaml), nothing else, into a folder to
# commit (e.g. docs/results/...):
#
#   scripts/collect_results.sh runs/cpu-paired/synthetic_cpu docs/results/cpu-paired/amd-epyc-avx512   # eval/ss
#   EVAL=ss_flip scripts/collect_results.sh RUNS/TABLE DEST
#   SEEDS="1 2 3" scripts/collect_results.sh RUNS/TABLE DEST     # only these seeds' runs (and the teacher's)
#
# Keeps the layout (<row>/seed<k>/eval/<EVAL>/metrics.json, the teacher's <row>/eval/<EVAL>/metrics.json, and the
# equal_cost.json of a MATCH=cost table), so
#   python scripts/make_table.py DEST --config-dir config/synthetic_cpu
# rebuilds the table without retraining (each metrics.json names its checkpoint relative to itself). Files already
# in DEST are kept: an identical one is skipped, a different one is an error and nothing is copied, so runs from
# several sessions add up without one overwriting another. A run whose metrics.json differs only in absolute paths
# (the teacher retrained by a new session on the same kind of machine: the same scores, machine and config) keeps
# DEST's files and is named. One DEST per machine (docs/results/cpu-paired/intel-xeon-amx, .../amd-epyc-avx512): each
# has its own teacher, and make_table.py over their parent pairs every seed with its own machine's runs.
set -euo pipefail
if [ "$#" -ne 2 ]; then
    echo "usage: $0 RUNS/TABLE DEST   (e.g. runs/cpu-paired/synthetic_cpu docs/results/cpu-paired/amd-epyc-avx512)" >&2
    exit 2
fi
src=$1 dest=$2 eval=${EVAL:-ss}
[ -d "$src" ] || { echo "error: $src: not a folder" >&2; exit 1; }
mapfile -t metrics < <(cd "$src" && find . -path "*/eval/$eval/metrics.json" -not -path "./logs/*" | sort)
[ "${#metrics[@]}" -gt 0 ] || { echo "error: $src: no */eval/$eval/metrics.json" >&2; exit 1; }
files=()
if [ -f "$src/equal_cost.json" ]; then files+=(./equal_cost.json); fi  # MATCH=cost runs: the schedule they follow
for f in "${metrics[@]}"; do
    if [ -n "${SEEDS:-}" ] && [[ "$f" =~ /seed([0-9]+)/eval/ ]] && [[ " $SEEDS " != *" ${BASH_REMATCH[1]} "* ]]; then
        continue
    fi
    files+=("$f")
    run=${f%/eval/"$eval"/metrics.json}
    if [ -f "$src/$run/config.yaml" ]; then files+=("$run/config.yaml"); fi
done
# A.json B.json: exit 0 when two metrics.json are one run's scores written from other folders: equal but for the
# absolute paths (the checkpoint's, the data root's, output.dir...) and in config keys added since (at the value the
# older code implied: engine.rundir.experiment_diff), as a teacher retrained on the same kind of machine in a new
# session is (CPU training is deterministic there). The machine is compared as the table labels
# it: trained_on's family and model (a newer generation with the same vector units, the same arithmetic) do not count.
# The interpreter as the table scripts pick it (scripts/table.sh: segkd_python), else python3.
source "$(dirname "$0")/table.sh"
repo=$SEGKD_ROOT python=$(segkd_python python3)

same_scores() {
    "$python" - "$1" "$2" "$repo" <<'EOF'
import json, sys
sys.path.insert(0, sys.argv[3])
from engine.rundir import experiment_diff  # noqa: E402  (the resume rule: defaults, and LEGACY for older configs)
from util.config import flat_dict  # noqa: E402
def same_config(new, old):
    """The same experiment: keys added since ``old`` was written at the value the older code implied; where files
    are (data.root, data.names, teacher.checkpoint, output.*) and test.* may differ."""
    new, old = flat_dict(new or {}), flat_dict(old or {})
    ignore = ("data.root", "data.names", "teacher.checkpoint")  # output.* and test.*: experiment_diff's own rule
    return not experiment_diff(old, new, ignore) and set(old) <= set(new)
def machine(m):
    if isinstance(m.get("trained_on"), dict):
        m["trained_on"] = {k: v for k, v in m["trained_on"].items() if k not in ("family", "model")}
    return m
def norm(x):
    if isinstance(x, dict):
        return {k: norm(v) for k, v in x.items() if k != "checkpoint"}
    if isinstance(x, list):
        return [norm(v) for v in x]
    return "<path>" if isinstance(x, str) and x.startswith("/") else x
a, b = (machine(json.load(open(p, encoding="utf-8"))) for p in sys.argv[1:3])
config_a, config_b = a.pop("config", None), b.pop("config", None)
sys.exit(0 if norm(a) == norm(b) and a.get("trained_on") is not None and same_config(config_a, config_b) else 1)
EOF
}
new=() kept=()
for f in "${files[@]}"; do
    if [ -e "$dest/$f" ]; then
        cmp -s "$src/$f" "$dest/$f" && continue
        run=${f%/eval/"$eval"/metrics.json}
        if [ "$run" != "$f" ] && same_scores "$src/$f" "$dest/$f"; then
            kept+=("$run")
            continue
        fi
        if [ "${f##*/}" = config.yaml ] && [[ " ${kept[*]-} " == *" ${f%/config.yaml} "* ]]; then continue; fi
        echo "error: $dest/${f#./} exists and differs from $src/${f#./}; nothing was copied" >&2
        exit 1
    else
        new+=("$f")
    fi
done
mkdir -p "$dest"
if [ "${#new[@]}" -gt 0 ]; then (cd "$src" && tar -cf - "${new[@]}") | (cd "$dest" && tar -xf -); fi
echo "$dest: ${#new[@]} new files, $((${#files[@]} - ${#new[@]})) already there (the runs' metrics.json and config.yaml)"
for run in ${kept[@]+"${kept[@]}"}; do
    echo "  kept $dest/${run#./}: the same scores, machine and config as $src/${run#./} but for its paths"
done
