#!/usr/bin/env bash
# The results table on PASCAL VOC 2012 val: teacher, R18 baseline, + logit KD, + aux KL, + aux SmoothL1.
#
#   NPROC=8 scripts/voc2012/table.sh                # after scripts/voc2012/prepare.sh (docs/VOC.md)
#   CHAIN="50 34 18" ROWS="pspnet18_baseline pspnet18_kd" scripts/voc2012/table.sh   # + the R34 assistant, R18 from it
#   ROWS="pspnet18_baseline dml_pspnet18_pspnet18 dml_pspnet50_pspnet18" scripts/voc2012/table.sh   # mutual learning
#   SEEDS="1" DATA=/data/voc2012 RUNS=/scratch/runs TEST_EXTRA="test.scales=[0.5,0.75,1.0,1.25,1.5,1.75] \
#       test.flip=true" scripts/voc2012/table.sh
#
# Trains the teacher once, each student row for each seed, evaluates every run and writes
# $RUNS/voc2012/table.{md,csv}. Rerunning skips finished runs and resumes interrupted ones.
# Environment variables: docs/TABLES.md and scripts/table.sh.
#
#   STUDENT=deeplabv3_mbv3l scripts/voc2012/table.sh   # CIRKD's DeepLabV3-MobileNetV3-Large from the DeepLabV3-R101
#
# STUDENT=deeplabv3_mbv3l: CIRKD's VOC row (teacher deeplabv3_r101_teacher; baseline, KD, FitNets, SKD, IFVD, CIRKD;
# runs and table in $RUNS/voc2012_deeplabv3_mbv3l). Unset: the PSPNet-R50 -> R18 table above.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../table.sh"

case ${STUDENT:-pspnet18} in
    pspnet18) ;;
    deeplabv3_mbv3l)
        TABLE_TEACHER_ROW=deeplabv3_r101_teacher TABLE_STUDENT=deeplabv3_mbv3l TABLE_RUNS=voc2012_deeplabv3_mbv3l
        PRESET_ROWS=$(for row in $MOBILE_ROWS; do echo "${TABLE_STUDENT}_$row"; done) ;;
    *) segkd_die "STUDENT=$STUDENT: expected pspnet18 (the default) or deeplabv3_mbv3l" ;;
esac

segkd_setup datasets/voc2012
[ -f "$DATA/list/val.txt" ] || segkd_die "$DATA/list/val.txt: not found; prepare VOC first with" \
    "scripts/voc2012/prepare.sh $DATA (docs/VOC.md) or set DATA"
segkd_data_args
segkd_table voc2012
