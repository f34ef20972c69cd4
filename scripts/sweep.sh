#!/usr/bin/env bash
# One config with one key swept over values, for each seed: train + test each, then a table (rows = values).
#
#   scripts/sweep.sh config/synthetic/pspnet18_kd.yaml distill.feat_loss none kl smoothl1
#   SEEDS="1 2" scripts/sweep.sh config/synthetic/pspnet18_kd.yaml distill.temperature 1 2 4
#   SCALE=demo SEEDS="11 12" scripts/sweep.sh config/synthetic_cpu/pspnet18_kd.yaml distill.temperature 1 2 4
#
# Runs go to $RUNS/sweep/<config name>/<KEY>=<value>/seed<k>; the table to $RUNS/sweep/<config name>/<KEY>.{md,csv}.
# Finished runs are skipped and interrupted ones resumed, as in the table scripts. DATA sets data.root and
# TEACHER the teacher checkpoint; with SCALE (a synthetic preset) they default to that preset's data and to
# the teacher its table trained ($RUNS/<table>/pspnet50_teacher, <table> = synthetic or synthetic_cpu). EXTRA,
# STUDENT_EXTRA (every sweep run is a "student") and TEST_EXTRA as in docs/TABLES.md. BASELINE (default with
# SCALE: $RUNS/sweep/<table>_baseline, trained here for the same seeds from <config dir>/pspnet18_baseline.yaml)
# gives every row its paired difference to the baseline of the same seed.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/table.sh"

if [ $# -lt 3 ]; then
    echo "usage: $0 CONFIG KEY VALUE [VALUE ...]" >&2
    exit 2
fi
config=$(segkd_abspath "$1")
key=$2
shift 2
[ -f "$config" ] || segkd_die "$config: config not found"
for value in "$@"; do
    case "$value" in */* | "") segkd_die "$key=$value: a swept value names a folder: no '/' and not empty" ;; esac
done

user_data=${DATA:-}
if [ -n "${SCALE:-}" ]; then segkd_synthetic_preset; fi
table=$(basename "${PRESET_CFGDIR:-config/synthetic}")
segkd_setup "${PRESET_DATA:-datasets/synthetic}"
DATA_ARGS=()
if [ -n "$user_data" ] || [ -n "${SCALE:-}" ]; then
    [ -f "$DATA/list/val.txt" ] || segkd_die "$DATA/list/val.txt: not found; make the dataset first" \
        "(e.g. SCALE=${SCALE:-full} scripts/synthetic/table.sh) or set DATA"
    segkd_data_args
fi

name=$(basename "$config" .yaml)
root=$RUNS/sweep/$name
common=(${DATA_ARGS[@]+"${DATA_ARGS[@]}"} ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"} ${STUDENT_ARGS[@]+"${STUDENT_ARGS[@]}"})
read -r EVAL has_teacher <<< "$(segkd_probe "$config" "${common[@]}" "$key=$1" \
    ${TEST_ARGS[@]+"${TEST_ARGS[@]}"})" || exit 1
if [ -n "${TEACHER:-}" ]; then
    common+=("teacher.checkpoint=$(segkd_abspath "$TEACHER")")
elif [ -n "${SCALE:-}" ] && [ "$has_teacher" = 1 ]; then
    common+=("teacher.checkpoint=$RUNS/$table/pspnet50_teacher/model/final.pth")
    if [ "$PRESET_TEACHER_CACHE" = 1 ]; then common+=("distill.teacher_cache=$RUNS/$table/teacher_cache"); fi
fi
echo "sweep $name: $key over $*; runs in $root, seeds $SEEDS, eval/$EVAL, NPROC=$NPROC"

dirs=()
for value in "$@"; do dirs+=("$root/$key=$value"); done
baseline_args=()
if [ -n "${BASELINE:-}" ]; then
    baseline_args=(--baseline "$(segkd_abspath "$BASELINE")")
elif [ -n "${SCALE:-}" ]; then
    base_cfg=$(dirname "$config")/pspnet18_baseline.yaml
    [ -f "$base_cfg" ] || segkd_die "$base_cfg: not found (set BASELINE to a folder of baseline runs)"
    base_common=(${DATA_ARGS[@]+"${DATA_ARGS[@]}"} ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"} \
        ${STUDENT_ARGS[@]+"${STUDENT_ARGS[@]}"})
    for seed in $SEEDS; do
        segkd_run "baseline seed$seed" "$base_cfg" "$RUNS/sweep/${table}_baseline/seed$seed" \
            "$RUNS/sweep/logs/${table}_baseline_seed$seed" "${base_common[@]}" "train.seed=$seed"
    done
    baseline_args=(--baseline "$RUNS/sweep/${table}_baseline")
fi
for seed in $SEEDS; do
    for value in "$@"; do
        segkd_run "$key=$value seed$seed" "$config" "$root/$key=$value/seed$seed" \
            "$root/logs/$key=${value}_seed$seed" "${common[@]}" "$key=$value" \
            "train.seed=$seed"
    done
done
"$PYTHON" scripts/make_table.py "${dirs[@]}" --group-by "$key" --seeds "$SEEDS" --eval "$EVAL" \
    --config "$config" ${baseline_args[@]+"${baseline_args[@]}"} --out-md "$root/$key.md" --out-csv "$root/$key.csv"
echo "wrote $root/$key.md and $root/$key.csv ($SECONDS s since the script started)"
