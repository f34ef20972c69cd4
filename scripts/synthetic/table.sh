#!/usr/bin/env bash
# The results table on the generated dataset: teacher, R18 baseline, + logit KD, + aux KL, + aux SmoothL1.
#
#   scripts/synthetic/table.sh                      # full scale (the configs as written): a GPU job
#   SCALE=demo scripts/synthetic/table.sh           # what `make demo` runs: the CPU tier, 3 seeds, 2 CPU cores
#   SCALE=demo DEMO_BF16=0 scripts/synthetic/table.sh   # the same in float32 where the CPU has bfloat16 units
#   SCALE=cpu-long scripts/synthetic/table.sh       # the same tier, 5 seeds, students 400 iterations (~1 h)
#   SCALE=cpu-paired scripts/synthetic/table.sh     # demo recipe, every row and the chain, 10 seeds (~26 min each)
#   SEEDS="1 2" EXTRA="train.epochs=10" NPROC=4 scripts/synthetic/table.sh
#   CHAIN="50 34 18" ROWS="pspnet18_baseline pspnet18_kd" scripts/synthetic/table.sh  # + an R34 assistant, R18 from it
#   ROWS="pspnet18_baseline dml_pspnet18_pspnet18 dml_pspnet50_pspnet18" scripts/synthetic/table.sh  # mutual
#
# Generates DATA (with GEN_ARGS) when it has no list/val.txt, trains the teacher once, each student row for
# each seed, evaluates every run and writes $RUNS/<table>/table.{md,csv} and figure.png (<table>: synthetic, or
# synthetic_cpu for the CPU presets, after their config folder). Rerunning skips finished runs and
# resumes interrupted ones. Environment variables and presets: docs/TABLES.md and scripts/table.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../table.sh"

segkd_synthetic_preset
segkd_setup "${PRESET_DATA}"
if [ "${SCALE:-full}" = demo ]; then
    case " ${EXTRA:-} ${TEACHER_EXTRA:-} ${STUDENT_EXTRA:-} " in
        *" train.amp"*) echo "[demo] training arithmetic as EXTRA / TEACHER_EXTRA / STUDENT_EXTRA set train.amp*" ;;
        *) if segkd_demo_bf16; then
               echo "[demo] training under bfloat16 autocast (DEMO_BF16=${DEMO_BF16:-auto}; DEMO_BF16=0 trains in float32)"
           elif [ "${DEMO_BF16:-auto}" = 0 ]; then
               echo "[demo] training in float32 (DEMO_BF16=0)"
           else
               echo "[demo] training in float32 (no avx512_bf16 or amx_bf16 on this CPU)"
           fi ;;
    esac
fi
GEN_ARGS=${GEN_ARGS:-$PRESET_GEN}
case " $GEN_ARGS " in *" --workers"*) ;; *) GEN_ARGS="$GEN_ARGS --workers $(nproc 2>/dev/null || echo 1)" ;; esac

if [ ! -f "$DATA/list/val.txt" ]; then
    echo "[data] generating $DATA: $PYTHON -m tools.synthetic --out $DATA $GEN_ARGS"
    # shellcheck disable=SC2086  # GEN_ARGS is a list of flags
    "$PYTHON" -m tools.synthetic --out "$DATA" $GEN_ARGS || segkd_die "generating $DATA failed (see above)"
else
    echo "[data] using $DATA: $(tr -d ' \n' < "$DATA/synthetic.json" 2>/dev/null || echo 'no synthetic.json')"
fi
segkd_data_args
table=$(basename "$PRESET_CFGDIR")
segkd_table "$table"
"$PYTHON" scripts/demo_figure.py "$RUNS/$table" --data "$DATA" --eval "$EVAL" --out "$RUNS/$table/figure.png" ||
    segkd_die "the figure failed (see above); the table is written"
