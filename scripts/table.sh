# shellcheck shell=bash
# Shared by scripts/voc2012/table.sh, scripts/synthetic/table.sh and scripts/sweep.sh, which source it:
# environment, one train+test run with skip/resume, the table loop and the synthetic scale presets.
# See docs/TABLES.md for the environment variables and the skip/resume rules.

SEGKD_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STUDENT_ROWS="pspnet18_baseline pspnet18_kd pspnet18_kd_aux_kl pspnet18_kd_aux_smoothl1"
MUTUAL_ROWS="dml_pspnet18_pspnet18 dml_pspnet50_pspnet18"  # ROWS may name them (no teacher); not run by default
# The other distilled rows ROWS may name (configs in config/synthetic_cpu and config/voc2012): the aux-head losses
# beyond the seed's, then one registered method of distill.terms each next to logit KD.
METHOD_ROWS="pspnet18_kd_aux_cwd pspnet18_kd_aux_dist pspnet18_kd_aux_kl_std pspnet18_kd_dkd pspnet18_kd_fitnet
    pspnet18_kd_at pspnet18_kd_skd pspnet18_kd_ifvd pspnet18_kd_cirkd pspnet18_kd_sphere pspnet18_kd_rkd pspnet18_kd_afd
    pspnet18_kd_ssld"
CHAIN_ASSISTANT=pspnet34_kd CHAIN_STUDENT=pspnet18_kd_ta     # CHAIN="<teacher depth> 34 18": their configs
# The rows' names: the teacher's and the students' prefix. The CIRKD tables (scripts/cityscapes|ade20k|camvid) set
# deeplabv3_r101_teacher and deeplabv3_r18 (their rows deeplabv3_r18_baseline, deeplabv3_r18_kd, ...), or a
# MobileNetV3 student's prefix (deeplabv3_mbv3s, pspnet_mbv3s, deeplabv3_mbv3l). TABLE_RUNS: the folder under $RUNS
# of the student runs and the table (default: the dataset's; another student's table in a folder of its own, its
# teacher still the dataset's $RUNS/<dataset>/<teacher row>).
TABLE_TEACHER_ROW=${TABLE_TEACHER_ROW:-pspnet50_teacher} TABLE_STUDENT=${TABLE_STUDENT:-pspnet18}
# A MobileNetV3 student's rows (CIRKD's network has no aux head: no aux-logit rows): config/<dataset>/<prefix>_<row>
MOBILE_ROWS="baseline kd kd_fitnet kd_skd kd_ifvd kd_cirkd"
CPU_LONG_ITERS=400  # SCALE=cpu-long: student iterations (the CPU configs say 150)
# SCALE=demo: the CPU configs' schedule shortened to fit 30 minutes on the slowest 2-vCPU VM seen (docs/TABLES.md):
# teacher 250 iterations (the configs say 500), students 60 (150), warmups cut in proportion; 8 val images through
# the network at a time (the same protocol up to float rounding; docs/results/LOG.md, 2026-12-07).
DEMO_TEACHER_ITERS="train.iters=250 train.warmup_iters=25" DEMO_STUDENT_ITERS="train.iters=60 train.warmup_iters=8"
DEMO_TEST="test.batch_size=8"
# SCALE=cpu-paired and cpu-long: their committed runs augmented with OpenCV's default thread pool (one thread a core),
# before data.opencv_threads existed; OpenCV's resize and warp can differ by one float ulp with the thread count, so
# these presets keep that pool to continue their seeds bitwise (the demo and everything else: one thread, the default).
# They and the demo also keep float32 batches (train.uint8_batches=false), as their committed runs were trained
# before uint8 batches became the default: continuing a table with the other arithmetic would mix the two.
COMMITTED_ARITHMETIC="data.opencv_threads=-1 train.uint8_batches=false" DEMO_ARITHMETIC="train.uint8_batches=false"
# SCALE=demo trains under bfloat16 autocast where the CPU has bfloat16 units (lscpu's avx512_bf16 or amx_bf16):
# DEMO_BF16=auto (default), 1 (always) or 0 (float32, the arithmetic of the demo tables before 2026-12-07's
# seventh session). Evaluation stays float32. Same verdicts, 22% less time on AMD family 26 (docs/results/LOG.md).
DEMO_BF16_ARGS="train.amp=true train.amp_dtype=bfloat16"

# The scripts cd to the repo root (configs and `-m tools.synthetic` resolve there): user paths must not move.
segkd_abspath() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }

segkd_die() { echo "error: $*" >&2; exit 1; }

# [FALLBACK]: the interpreter the scripts run: PYTHON, else an activated environment's (VIRTUAL_ENV, CONDA_PREFIX)
# python, else the repository's .venv (make venv), else FALLBACK (default python). Also for collect_results.sh and
# voc2012/prepare.sh, which source this file for it.
segkd_python() {
    if [ -n "${PYTHON:-}" ]; then
        printf '%s\n' "$PYTHON"
    elif [ -z "${VIRTUAL_ENV:-}${CONDA_PREFIX:-}" ] && [ -x "$SEGKD_ROOT/.venv/bin/python" ]; then
        printf '%s\n' "$SEGKD_ROOT/.venv/bin/python"
    else
        printf '%s\n' "${1:-python}"
    fi
}

# Exit 0 when the CPU has bfloat16 units (the avx512_bf16 or amx_bf16 flag of /proc/cpuinfo, as util/machine.py's
# cpu_flags reads it for metrics.json, without starting Python), else 1.
segkd_cpu_bf16() { grep -qwE 'avx512_bf16|amx_bf16' /proc/cpuinfo 2>/dev/null; }

# Exit 0 when the demo trains in bfloat16 (DEMO_BF16: auto, 1 or 0), else 1.
segkd_demo_bf16() {
    case "${DEMO_BF16:-auto}" in
        1) return 0 ;;
        0) return 1 ;;
        auto) segkd_cpu_bf16 ;;
        *) segkd_die "DEMO_BF16=$DEMO_BF16: expected auto (bfloat16 where the CPU has avx512_bf16 or amx_bf16)," \
            "1 (bfloat16) or 0 (float32)" ;;
    esac
}

# Scale presets of the synthetic table, as defaults under the user's variables (see docs/TABLES.md).
#   full: the VOC-sized tier with the configs of config/synthetic as written (321 crop, 30 epochs): a GPU table.
#   demo: `make demo`, the CPU tier (96 px scenes, config/synthetic_cpu), 3 seeds, on a shorter schedule than the
#     configs' (DEMO_*_ITERS above), evaluating 8 images at a time (DEMO_TEST), training in bfloat16 where the CPU
#     has bfloat16 units (DEMO_BF16); measured in docs/TABLES.md and docs/results/LOG.md.
#   cpu-long: the tier's configs with 5 seeds and students trained 400 iterations (about an hour).
#   cpu-paired: the tier's configs as written (teacher 500, students 150 iterations) over 10 seeds with every row
#     and the chain: the instrument of docs/TABLES.md (about 26 min per seed on a 2-vCPU VM; runs can span sessions).
#   tiny: seconds per run, for tests/test_table_script.py; the numbers mean nothing.
# The CPU presets share the teacher's logits between the distilled rows of a seed (distill.teacher_cache).
segkd_synthetic_preset() {
    PRESET_EXTRA="" PRESET_TEACHER_EXTRA="" PRESET_STUDENT_EXTRA="" PRESET_TEST_EXTRA=""
    PRESET_CFGDIR=config/synthetic PRESET_TEACHER_CACHE=0 PRESET_ROWS=$STUDENT_ROWS PRESET_CHAIN="" PRESET_DROP_LAST=0
    case "${SCALE:-full}" in
        full)
            PRESET_GEN="--train 1464 --val 300 --classes 21 --seed 0" PRESET_SEEDS="1 2 3"
            PRESET_DATA=datasets/synthetic PRESET_RUNS=runs ;;
        demo | cpu-long | cpu-paired)
            PRESET_GEN="--preset cpu --train 2000 --val 300 --seed 0 --unlabeled 2000" PRESET_DATA=datasets/synthetic_cpu
            PRESET_CFGDIR=config/synthetic_cpu PRESET_TEACHER_CACHE=1
            if [ "$SCALE" = demo ]; then
                PRESET_SEEDS="1 2 3" PRESET_RUNS=runs/demo PRESET_EXTRA=$DEMO_ARITHMETIC
                if segkd_demo_bf16; then PRESET_EXTRA="$PRESET_EXTRA $DEMO_BF16_ARGS"; fi
                PRESET_TEACHER_EXTRA=$DEMO_TEACHER_ITERS PRESET_STUDENT_EXTRA=$DEMO_STUDENT_ITERS
                PRESET_TEST_EXTRA=$DEMO_TEST
            elif [ "$SCALE" = cpu-paired ]; then
                PRESET_SEEDS="1 2 3 4 5 6 7 8 9 10" PRESET_RUNS=runs/cpu-paired PRESET_CHAIN="50 34 18" PRESET_DROP_LAST=1
                PRESET_ROWS=$(echo $STUDENT_ROWS $METHOD_ROWS $MUTUAL_ROWS) PRESET_EXTRA=$COMMITTED_ARITHMETIC
            else
                PRESET_SEEDS="1 2 3 4 5" PRESET_RUNS=runs/cpu-long PRESET_STUDENT_EXTRA="train.iters=$CPU_LONG_ITERS"
                PRESET_EXTRA=$COMMITTED_ARITHMETIC
            fi ;;
        tiny)
            PRESET_GEN="--train 8 --val 4 --classes 4 --seed 0 --workers 1" PRESET_SEEDS="1"
            PRESET_DATA=datasets/synthetic_tiny PRESET_RUNS=runs/tiny
            PRESET_EXTRA="train.iters=2 train.batch_size=2 train.crop_size=65 train.workers=0 train.log_every=1
                test.base_size=80 test.crop_size=65" ;;
        *) segkd_die "SCALE=$SCALE: expected full, demo, cpu-long, cpu-paired or tiny" ;;
    esac
    # MATCH=cost (or flops): the equal-cost schedule of docs/TABLES.md in a runs folder of its own, never mixed
    case "${MATCH:-}" in
        "") ;;
        cost | flops)
            case "${SCALE:-full}" in
                cpu-paired | tiny) PRESET_RUNS=$PRESET_RUNS-equal-$MATCH ;;
                *) segkd_die "MATCH=$MATCH: only with SCALE=cpu-paired (the instrument, whose rows have measured costs)" ;;
            esac ;;
        *) segkd_die "MATCH=$MATCH: expected cost (wall-clock matched), flops (FLOPs matched) or unset (iterations)" ;;
    esac
}

# ROOT CFGDIR OVERRIDES...: with MATCH=cost or flops, each row's train.iters and train.warmup_iters for the cost of
# logit KD at its configured schedule (python -m tools.equal_cost), from COST_FILE (default: this machine kind's
# docs/results/cost/<machine>.json; another machine's is refused), recorded in ROOT/equal_cost.json, where another
# schedule is refused. Fills SCHEDULE[row]; empty without MATCH.
declare -A SCHEDULE=()
segkd_equal_cost() {
    local root=$1 cfgdir=$2 device=cpu match=seconds cost out row args rows=$ROWS
    shift 2
    SCHEDULE=()
    if [ -z "${MATCH:-}" ]; then
        [ ! -f "$root/equal_cost.json" ] || segkd_die "$root holds equal-cost runs ($root/equal_cost.json): set MATCH" \
            "as they were trained, or another RUNS for iteration-matched runs (nothing was overwritten)"
        return 0
    fi
    if [ "$MATCH" = flops ]; then match=flops; fi
    if [ "$NPROC" -gt 0 ]; then device=cuda; fi
    if [ -n "${CHAIN:-}" ] && [ -n "${CHAIN//[[:space:]]/}" ]; then rows="$rows $CHAIN_ASSISTANT $CHAIN_STUDENT"; fi
    cost=${COST_FILE:-}
    if [ -z "$cost" ]; then
        cost=$("$PYTHON" -c 'import sys; from tools.equal_cost import cost_path, this_machine
print(cost_path(this_machine(sys.argv[1])))' "$device") || exit 1
    else
        cost=$(segkd_abspath "$cost")
    fi
    out=$("$PYTHON" -m tools.equal_cost --cost "$cost" --rows "$rows" --match "$match" --this-machine "$device" \
        --config-dir "$cfgdir" --lines --record "$root/equal_cost.json" -- "$@") || exit 1
    while read -r row args; do SCHEDULE[$row]=$args; done <<< "$out"
    echo "equal cost, $match matched ($cost): ${#SCHEDULE[@]} rows, each for the cost of logit KD's schedule" \
        "(recorded in $root/equal_cost.json)"
}

# PYTHON, RUNS, DATA (absolute), NPROC, the override arrays; then cd to the repo root.
# Uses PRESET_* when set (the synthetic presets), else plain defaults.
segkd_setup() {
    PYTHON=$(segkd_python)
    case "$PYTHON" in */*) PYTHON=$(segkd_abspath "$PYTHON") ;; esac
    RUNS=$(segkd_abspath "${RUNS:-$SEGKD_ROOT/${PRESET_RUNS:-runs}}")
    DATA=$(segkd_abspath "${DATA:-$SEGKD_ROOT/${PRESET_DATA:-$1}}")
    SEEDS=${SEEDS:-${PRESET_SEEDS:-1 2 3}}
    TEACHER_SEED=${TEACHER_SEED:-1}
    if [ -n "${TEACHER:-}" ]; then TEACHER=$(segkd_abspath "$TEACHER"); fi
    ROWS=${ROWS:-${PRESET_ROWS:-$STUDENT_ROWS}}
    CHAIN=${CHAIN-${PRESET_CHAIN:-}}  # set and empty: no chain, whatever the preset says
    DROP_LAST=${DROP_LAST:-${PRESET_DROP_LAST:-0}}
    case "$DROP_LAST" in 0 | 1) ;; *) segkd_die "DROP_LAST=$DROP_LAST: expected 1 (delete a finished run's" \
        "model/last.pth and a finished seed's teacher cache) or 0 (keep them)" ;; esac
    if [ -z "${NPROC:-}" ]; then
        NPROC=0
        if command -v nvidia-smi >/dev/null 2>&1; then NPROC=$(nvidia-smi -L 2>/dev/null | wc -l); fi
    fi
    # Word-split the override strings: one key=value per word, no spaces inside a value.
    # (read -d '' takes newlines too and returns 1 at the end of its input.)
    read -r -d '' -a EXTRA_ARGS <<< "${PRESET_EXTRA:-} ${EXTRA:-}" || true
    read -r -d '' -a TEACHER_ARGS <<< "${PRESET_TEACHER_EXTRA:-} ${TEACHER_EXTRA:-}" || true
    read -r -d '' -a STUDENT_ARGS <<< "${PRESET_STUDENT_EXTRA:-} ${STUDENT_EXTRA:-}" || true
    read -r -d '' -a TEST_ARGS <<< "${PRESET_TEST_EXTRA:-} ${TEST_EXTRA:-}" || true
    cd "$SEGKD_ROOT"
}

# data.root (and data.classes, read from a generated set's synthetic.json) for every run.
segkd_data_args() {
    DATA_ARGS=("data.root=$DATA")
    if [ -f "$DATA/names.txt" ]; then DATA_ARGS+=("data.names=$DATA/names.txt"); fi
    if [ -f "$DATA/synthetic.json" ]; then
        DATA_ARGS+=("data.classes=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["classes"])' \
            "$DATA/synthetic.json")")
    fi
}

# CONFIG OVERRIDES... -> "<eval folder> <1 if teacher.checkpoint is set, else 0>"; a bad override fails here, early.
segkd_probe() {
    "$PYTHON" - "$@" <<'EOF'
import sys
from util.config import load_config
from util.errors import SegKDError
from engine.evaluate import protocol_name
try:
    cfg = load_config(sys.argv[1], sys.argv[2:])
except SegKDError as e:
    sys.exit(f"error: {e}")
print(protocol_name(cfg), int(cfg.teacher.checkpoint is not None))
EOF
}

# SCRIPT ARGS...: plain python on CPU (NPROC=0), else torchrun with NPROC processes. A SIGTERM or SIGINT sent to
# this script (`kill PID`, a scheduler's stop) is passed on to it, which writes model/last.pth and exits, and the
# script waits for that (a foreground child would be left running on its own); SEGKD_STOPPED names the signal.
segkd_launch() {
    local child= rc=0 watcher= from=0
    SEGKD_STOPPED=
    # The traps come first, so a signal before the child starts stops it too. `|| :`: under `set -e` a kill of a
    # child that has just exited would end the script from inside the trap. (SIGTERM for a SIGINT too: a child
    # started with `&` ignores SIGINT until train.py installs its handler.)
    trap 'SEGKD_STOPPED=SIGTERM; [ -z "$child" ] || kill -TERM "$child" 2>/dev/null || :' TERM
    trap 'SEGKD_STOPPED=SIGINT; [ -z "$child" ] || kill -TERM "$child" 2>/dev/null || :' INT
    if [ -n "${SEGKD_WATCH:-}" ]; then from=$(wc -c < "$SEGKD_WATCH"); fi  # what the log held before this step
    if [ "$NPROC" -gt 0 ]; then
        "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" "$@" 3>&- &
    else
        "$PYTHON" "$@" 3>&- &  # fd 3, the console of segkd_follow, is not the step's
    fi
    child=$!
    if [ -n "$SEGKD_STOPPED" ]; then kill -TERM "$child" 2>/dev/null || :; fi
    if [ -n "${SEGKD_WATCH:-}" ]; then segkd_follow "$child" "$SEGKD_WATCH" "$from" & watcher=$!; fi
    wait "$child" || rc=$?
    while kill -0 "$child" 2>/dev/null; do  # a trapped signal ends `wait` early: wait for the child itself
        rc=0
        wait "$child" || rc=$?
    done
    if [ -n "$watcher" ]; then wait "$watcher" 2>/dev/null || :; fi  # its last line before the caller's next
    trap - TERM INT
    return "$rc"
}

# PID LOG FROM: while PID runs, each progress line train.py appends to LOG after byte FROM (engine/trainer.py's
# Trainer.report, whose first term is always the total loss), shortened, on fd 3 (the console: segkd_step opens it),
# e.g. "  [00:29:57] iter 50/250 loss 1.7543, 3.5 img/s, eta 00:07:34". GNU tail and sed only (--pid, -u); elsewhere,
# or with PROGRESS=0, nothing.
segkd_follow() {
    [ "${PROGRESS:-1}" != 0 ] && [[ "$(tail --version 2>/dev/null)$(sed --version 2>/dev/null)" == *GNU*GNU* ]] ||
        return 0
    tail -c "+$(($3 + 1))" -F -s 0.2 --pid="$1" "$2" 2>/dev/null |
        sed -u -n -E 's/^(\[[0-9:]+\]) epoch [0-9]+\/[0-9]+ iter ([0-9]+\/[0-9]+) (loss [^ ]+) .* ([0-9.]+ img\/s) eta ([0-9:]+)$/  \1 iter \2 \3, \4, eta \5/p' >&3
}

# NAME KIND LOG SCRIPT ARGS...: run one step, its stdout and stderr appended to LOG; stop the script on failure.
segkd_step() {
    local name=$1 kind=$2 log=$3 start=$SECONDS rc=0
    shift 3
    mkdir -p "$(dirname "$log")"
    echo "# $(date '+%F %T') $*" >> "$log"
    SEGKD_WATCH=$log segkd_launch "$@" 3>&1 >> "$log" 2>&1 || rc=$?
    if [ -n "$SEGKD_STOPPED" ]; then
        echo "stopped by $SEGKD_STOPPED during the $kind of $name (exit $rc); log: $log" >&2
        echo "finished runs are kept, and an interrupted training its model/last.pth: rerun the same command" \
            "to resume from $name" >&2
        exit $((128 + $([ "$SEGKD_STOPPED" = SIGINT ] && echo 2 || echo 15)))
    fi
    if [ "$rc" -ne 0 ]; then
        echo "error: $kind of $name failed (exit $rc); log: $log" >&2
        tail -n 15 "$log" | sed 's/^/    /' >&2
        echo "finished runs are kept; rerun the same command to continue from $name" >&2
        exit 1
    fi
    echo "  $kind done in $((SECONDS - start)) s (log: $log)"
}

# RUN_DIR CONFIG OVERRIDES...: stop when RUN_DIR's finished run was trained as another experiment than CONFIG with
# OVERRIDES (e.g. a runs/demo of an older recipe, or other EXTRA): a table never mixes two recipes. Where files
# are (data.root, data.names, teacher.checkpoint, output.*) and test.* may differ; a run without config.yaml (an
# adopted TEACHER) is not checked. train.py checks an interrupted run itself when it resumes.
segkd_same_run() {
    [ -f "$1/config.yaml" ] || return 0
    "$PYTHON" - "$@" <<'EOF' || exit 1
import os
import sys
from engine.rundir import experiment_diff
from util.config import flat_dict, load_config
from util.errors import SegKDError
run_dir, config, overrides = sys.argv[1], sys.argv[2], sys.argv[3:]
saved = os.path.join(run_dir, "config.yaml")
try:
    old, new = flat_dict(load_config(saved)), flat_dict(load_config(config, overrides + [f"output.dir={run_dir}"]))
except SegKDError as e:
    sys.exit(f"error: {e}")
where = ("data.root", "data.names", "teacher.checkpoint")
diff = experiment_diff(old, new, where)  # output.* and test.* may differ too (engine/rundir.py)
if diff:
    hint = "; DEMO_BF16=0 or 1 picks the demo's arithmetic" if "train.amp" in diff else ""
    sys.exit(f"error: {run_dir}: a finished run of another experiment ({diff}); remove it or set RUNS{hint} "
             "(nothing was overwritten)")
EOF
}

# RUN_DIR: with DROP_LAST=1, delete the finished run's model/last.pth (the optimizer state that only resuming reads,
# about 0.4 GB a run of the CPU tier; a 10-seed instrument keeps 84 GB of them otherwise). Only once its
# eval/$EVAL/metrics.json exists; model/final.pth, the weights every later step reads, stays.
segkd_drop_last() {
    if [ "$DROP_LAST" = 1 ] && [ -f "$1/eval/$EVAL/metrics.json" ] && [ -f "$1/model/last.pth" ]; then
        rm -f "$1/model/last.pth"
        echo "  removed $1/model/last.pth (DROP_LAST=1: the run is finished; final.pth and metrics.json stay)"
    fi
}

# CACHE_DIR SEED: with DROP_LAST=1, delete the teacher's cached logits once every run of SEED is done. A seed's
# batches are its own, so no later seed reads them (the 10-seed instrument kept 18 GB of them otherwise); a later
# call that reruns the seed computes them again. Called after the seed's last run, which stops the script if it fails.
segkd_drop_cache() {
    if [ "$DROP_LAST" = 1 ] && [ -d "$1" ]; then
        rm -rf "$1"
        echo "  removed $1 (DROP_LAST=1: every run of seed $2 is finished; no later seed reads its logits)"
    fi
}

# NAME CONFIG RUN_DIR LOG OVERRIDES...: train (or resume) then test one run, skipping what is already done.
#   eval/$EVAL/metrics.json exists -> skip; model/final.pth exists -> test only (test.py);
#   config.yaml exists (an interrupted run) -> train.resume=auto; otherwise a fresh run.
# A run that trains is evaluated by train.py itself when its training ends (test.after_training, with the test.*
# overrides test.py would get): one process, the same metrics.json. Logs go to LOG.train.log (and LOG.test.log
# for test.py), outside RUN_DIR: train.py wants a new run dir empty.
segkd_run() {
    local name=$1 config=$2 dir=$3 log=$4
    shift 4
    local metrics="$dir/eval/$EVAL/metrics.json"
    local test_args=(${TEST_ARGS[@]+"${TEST_ARGS[@]}"} "test.out_dir=$dir/eval/$EVAL")
    RAN=0
    if [ -f "$metrics" ]; then
        segkd_same_run "$dir" "$config" "$@"
        echo "[skip] $name: $metrics exists"
        segkd_drop_last "$dir"
        return 0
    fi
    RAN=1
    if [ -f "$dir/model/final.pth" ]; then
        segkd_same_run "$dir" "$config" "$@"
        echo "[test] $name: $dir/model/final.pth exists, evaluating it"
        segkd_step "$name" evaluation "$log.test.log" test.py --config "$config" "$@" "${test_args[@]}" \
            "output.dir=$dir"
        segkd_drop_last "$dir"
        return 0
    fi
    local resume=()
    if [ -f "$dir/config.yaml" ]; then resume=(train.resume=auto); fi
    echo "[train] $name -> $dir${resume[*]:+ (resuming)}"
    segkd_step "$name" "training and evaluation" "$log.train.log" train.py --config "$config" "$@" "output.dir=$dir" \
        "${test_args[@]}" test.after_training=true ${resume[@]+"${resume[@]}"}
    segkd_drop_last "$dir"
}

# mm:ss (h:mm:ss past an hour) of a number of seconds.
segkd_clock() { if [ "$1" -ge 3600 ]; then printf '%d:%02d:%02d' $(($1 / 3600)) $(($1 % 3600 / 60)) $(($1 % 60));
    else printf '%02d:%02d' $(($1 / 60)) $(($1 % 60)); fi; }

# K N NAME: "[run K/N] NAME (elapsed, ETA)". The ETA is the mean time of the student runs this call has
# trained so far times the student runs left (the teacher's own time is not predicted: "ETA after 1st student").
segkd_progress() {
    local eta="ETA after the first student run"
    if [ "$STUDENTS_TIMED" -gt 0 ]; then
        eta="ETA $(segkd_clock $((STUDENT_SECONDS * STUDENTS_LEFT / STUDENTS_TIMED)))"
    fi
    echo "[run $1/$2] $3 (elapsed $(segkd_clock "$SECONDS"), $eta)"
}

# TEACHER_DIR: TEACHER=PATH (e.g. a published teacher imported by tools.import_weights) becomes the table's teacher
# run: copied to TEACHER_DIR/model/final.pth (an existing different file there is an error, never overwritten), so
# it is evaluated as the teacher row and distils every student. Prints its depth (for teacher.layers).
segkd_adopt_teacher() {
    local dest=$1/model/final.pth layers
    [ -f "$TEACHER" ] || segkd_die "TEACHER=$TEACHER: not found"
    layers=$("$PYTHON" - "$TEACHER" <<'EOF'
import sys
from model.build import TEACHER_MODES, check_segkd, describe_checkpoint
from util.checkpoint import load_checkpoint
from util.errors import SegKDError
try:
    ckpt = load_checkpoint(sys.argv[1])
    check_segkd(ckpt, sys.argv[1], "TEACHER")
    if ckpt["mode"] not in TEACHER_MODES:
        raise SegKDError(f"{sys.argv[1]}: TEACHER is {describe_checkpoint(ckpt)}, not a supervised teacher")
except SegKDError as e:
    sys.exit(f"error: {e}")
print(ckpt["layers"])
EOF
) || exit 1
    if [ -e "$dest" ]; then
        cmp -s "$TEACHER" "$dest" || segkd_die "$dest exists and is not TEACHER=$TEACHER; remove it or set RUNS"
    else
        mkdir -p "$(dirname "$dest")"
        cp "$TEACHER" "$dest.tmp" && mv "$dest.tmp" "$dest"
    fi
    echo "$layers"
}

# DEPTH: CHAIN is empty or "DEPTH 34 18" (DEPTH: the table's teacher): the one chain there are configs for.
segkd_check_chain() {
    local words
    read -r -a words <<< "${CHAIN:-}"
    if [ "${#words[@]}" -eq 0 ] || [ "${words[*]}" = "$1 34 18" ]; then return 0; fi
    segkd_die "CHAIN=\"$CHAIN\": the chain is \"$1 34 18\" (the table's R$1 teacher, the R34 assistant of" \
        "$CHAIN_ASSISTANT.yaml, the R18 student of $CHAIN_STUDENT.yaml) or empty"
}

# ROW SEED OVERRIDES...: the progress line, then train and test one student run into $root/ROW/seed<SEED> with
# config $cfgdir/ROW.yaml, timed for the ETA (k, total, cfgdir, root and common are segkd_table's locals).
segkd_student() {
    local row=$1 seed=$2 start=$SECONDS sched=()
    shift 2
    k=$((k + 1))
    if [ -n "${SCHEDULE[$row]+x}" ]; then read -r -a sched <<< "${SCHEDULE[$row]}"; fi  # MATCH: its iterations
    segkd_progress $k $total "$row seed$seed${sched[*]:+ (${sched[*]})}"
    segkd_run "$row seed$seed" "$cfgdir/$row.yaml" "$root/$row/seed$seed" "$root/logs/${row}_seed$seed" \
        "${common[@]}" ${STUDENT_ARGS[@]+"${STUDENT_ARGS[@]}"} "$@" ${sched[@]+"${sched[@]}"} "train.seed=$seed"
    STUDENTS_LEFT=$((STUDENTS_LEFT - 1))
    if [ "$RAN" = 1 ]; then
        STUDENT_SECONDS=$((STUDENT_SECONDS + SECONDS - start)) STUDENTS_TIMED=$((STUDENTS_TIMED + 1))
    fi
}

# DATASET: the teacher once (or TEACHER, adopted), then each student row for each seed (and, with CHAIN, the
# assistant distilled from the teacher and the student distilled from that seed's assistant), then the table in
# $RUNS/DATASET (configs in config/DATASET). With TEACHER_CACHE=1 the runs distilled from the teacher share its
# logits in $RUNS/DATASET/teacher_cache.
segkd_table() {
    local ds=$1 cfgdir=config/$1 root=$RUNS/${TABLE_RUNS:-$1} seed row k=1 chain=0
    local teacher_row=$TABLE_TEACHER_ROW teacher_dir=$RUNS/$1/$TABLE_TEACHER_ROW
    local common=(${DATA_ARGS[@]+"${DATA_ARGS[@]}"} ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"})
    local n_seeds n_rows total
    n_seeds=$(wc -w <<< "$SEEDS") n_rows=$(wc -w <<< "$ROWS")
    local known
    known=$(echo $STUDENT_ROWS $METHOD_ROWS $MUTUAL_ROWS)  # one line, one space apart
    if [ "$TABLE_STUDENT" != pspnet18 ]; then  # the same rows by another name; no mutual-learning configs there
        known=$(echo $STUDENT_ROWS $METHOD_ROWS | sed "s/pspnet18_/${TABLE_STUDENT}_/g")
    fi
    for row in $ROWS; do
        case " $known " in *" $row "*) ;; *) segkd_die "ROWS: $row is not one of: $known" ;; esac
        [ -f "$cfgdir/$row.yaml" ] || segkd_die "ROWS: $row has no config $cfgdir/$row.yaml"
        if [ "$row" = pspnet18_kd_ssld ] && [ ! -f "$DATA/list/unlabeled.txt" ]; then
            segkd_die "ROWS: $row needs an unlabelled pool, $DATA/list/unlabeled.txt (generated data: python -m" \
                "tools.synthetic --out <new folder> --preset cpu --unlabeled 2000, then DATA=<that folder>)"
        fi
    done
    EVAL=$(segkd_probe "$cfgdir/$teacher_row.yaml" "${common[@]}" ${TEST_ARGS[@]+"${TEST_ARGS[@]}"}) || exit 1
    EVAL=${EVAL% *}
    local teacher_kd=() layers=50
    if [ -n "${TEACHER:-}" ]; then
        layers=$(segkd_adopt_teacher "$teacher_dir") || exit 1
        teacher_kd=("teacher.layers=$layers")
        echo "table $ds: runs in $root, seeds $SEEDS (teacher TEACHER=$TEACHER, R$layers), eval/$EVAL, NPROC=$NPROC"
    else
        echo "table $ds: runs in $root, seeds $SEEDS (teacher seed $TEACHER_SEED), eval/$EVAL, NPROC=$NPROC"
    fi
    segkd_check_chain "$layers"
    if [ -n "${CHAIN//[[:space:]]/}" ] && [ "$TABLE_STUDENT" != pspnet18 ]; then
        segkd_die "CHAIN=\"$CHAIN\": $cfgdir has no teacher-assistant configs"
    fi
    segkd_equal_cost "$root" "$cfgdir" "${common[@]}" ${STUDENT_ARGS[@]+"${STUDENT_ARGS[@]}"}
    if [ -n "${CHAIN:-}" ] && [ -n "${CHAIN//[[:space:]]/}" ]; then chain=2; echo "chain R$layers -> R34 -> R18 for every seed"; fi
    total=$((1 + n_seeds * (n_rows + chain)))
    STUDENT_SECONDS=0 STUDENTS_TIMED=0 STUDENTS_LEFT=$((n_seeds * (n_rows + chain)))
    segkd_progress $k $total "$teacher_row"
    segkd_run "$teacher_row" "$cfgdir/$teacher_row.yaml" "$teacher_dir" "$root/logs/$teacher_row" \
        "${common[@]}" ${TEACHER_ARGS[@]+"${TEACHER_ARGS[@]}"} "train.seed=$TEACHER_SEED"
    local kd=("teacher.checkpoint=$teacher_dir/model/final.pth" ${teacher_kd[@]+"${teacher_kd[@]}"})
    if [ "${TEACHER_CACHE:-${PRESET_TEACHER_CACHE:-0}}" = 1 ]; then
        kd+=("distill.teacher_cache=$root/teacher_cache")
    fi
    for seed in $SEEDS; do
        for row in $ROWS; do
            case $row in
                *_baseline | dml_*) segkd_student "$row" "$seed" ;;  # no teacher
                *) segkd_student "$row" "$seed" "${kd[@]}" ;;
            esac
        done
        if [ "$chain" -gt 0 ]; then
            segkd_student "$CHAIN_ASSISTANT" "$seed" "${kd[@]}"
            segkd_student "$CHAIN_STUDENT" "$seed" \
                "teacher.checkpoint=$root/$CHAIN_ASSISTANT/seed$seed/model/final.pth" teacher.layers=34
        fi
        segkd_drop_cache "$root/teacher_cache" "$seed"
    done
    local tables=("$root")
    if [ "$root" != "$RUNS/$1" ]; then tables+=("$teacher_dir"); fi  # the teacher lives beside the dataset's rows
    "$PYTHON" scripts/make_table.py "${tables[@]}" --seeds "$SEEDS" --eval "$EVAL" --config-dir "$cfgdir" \
        --out-md "$root/table.md" --out-csv "$root/table.csv"
    echo "wrote $root/table.md and $root/table.csv ($(segkd_clock "$SECONDS") since the script started)"
    if [ -n "${MATCH:-}" ]; then
        echo "beside the iteration-matched runs: $PYTHON scripts/make_table.py <their table folder> --equal-cost $root" \
            "--config-dir $cfgdir (docs/TABLES.md, Equal-cost comparisons)"
    fi
}
