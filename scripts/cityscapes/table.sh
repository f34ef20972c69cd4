#!/usr/bin/env bash
# The CIRKD table on Cityscapes val (500 images, the whole 1024x2048 image as CIRKD's eval.py): the DeepLabV3-R101
# teacher, the DeepLabV3-R18 baseline and distilled students (config/cityscapes, CIRKD's recipe; docs/DATASETS.md).
#
#   python -m tools.prepare_cityscapes --dest datasets/cityscapes --images leftImg8bit_trainvaltest.zip \
#       --labels gtFine_trainvaltest.zip   # first
#   NPROC=8 scripts/cityscapes/table.sh
#   TEACHER=teachers/deeplabv3_r101_cityscapes.pth scripts/cityscapes/table.sh   # an imported teacher
#   ROWS="deeplabv3_r18_baseline deeplabv3_r18_kd deeplabv3_r18_kd_fitnet" SEEDS="1" scripts/cityscapes/table.sh
#
# Trains the teacher once, each student row for each seed, evaluates every run and writes
# $RUNS/cityscapes/table.{md,csv}, as scripts/voc2012/table.sh does (environment variables: docs/TABLES.md and
# scripts/table.sh). Default rows: the baseline, logit KD and the methods of CIRKD's first table (CWD on the aux
# logits, SKD, IFVD, CIRKD); ROWS may name any config deeplabv3_r18_<row> of config/cityscapes.
#
#   STUDENT=deeplabv3_mbv3s scripts/cityscapes/table.sh   # CIRKD's DeepLabV3-MobileNetV3-Small (or pspnet_mbv3s)
#
# STUDENT picks the student: deeplabv3_r18 (the default), deeplabv3_mbv3s or pspnet_mbv3s (CIRKD's MobileNetV3-Small
# students: baseline, KD, FitNets, SKD, IFVD, CIRKD; runs and table in $RUNS/cityscapes_<STUDENT>, the same teacher).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../table.sh"

TABLE_TEACHER_ROW=deeplabv3_r101_teacher TABLE_STUDENT=${STUDENT:-deeplabv3_r18}
case $TABLE_STUDENT in
    deeplabv3_r18)
        PRESET_ROWS="deeplabv3_r18_baseline deeplabv3_r18_kd deeplabv3_r18_kd_aux_cwd deeplabv3_r18_kd_skd
            deeplabv3_r18_kd_ifvd deeplabv3_r18_kd_cirkd" ;;
    deeplabv3_mbv3s | pspnet_mbv3s)
        PRESET_ROWS=$(for row in $MOBILE_ROWS; do echo "${TABLE_STUDENT}_$row"; done)
        TABLE_RUNS=cityscapes_$TABLE_STUDENT ;;
    *) segkd_die "STUDENT=$TABLE_STUDENT: expected deeplabv3_r18, deeplabv3_mbv3s or pspnet_mbv3s" ;;
esac
segkd_setup datasets/cityscapes
[ -f "$DATA/list/val.txt" ] || segkd_die "$DATA/list/val.txt: not found; prepare cityscapes first with" \
    "python -m tools.prepare_cityscapes (docs/DATASETS.md) or set DATA"
segkd_data_args
segkd_table cityscapes
