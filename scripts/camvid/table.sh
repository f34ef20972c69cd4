#!/usr/bin/env bash
# The CIRKD table on CamVid test (233 images of 360x480, whole, as CIRKD's eval.py): the DeepLabV3-R101 teacher, the
# DeepLabV3-R18 baseline and distilled students (config/camvid, CIRKD's recipe; docs/DATASETS.md).
#
#   python -m tools.prepare_camvid --dest datasets/camvid --archive CamVid.zip   # first
#   NPROC=8 scripts/camvid/table.sh
#   TEACHER=teachers/deeplabv3_r101_camvid.pth scripts/camvid/table.sh   # an imported teacher
#   ROWS="deeplabv3_r18_baseline deeplabv3_r18_kd deeplabv3_r18_kd_fitnet" SEEDS="1" scripts/camvid/table.sh
#
# Trains the teacher once, each student row for each seed, evaluates every run and writes
# $RUNS/camvid/table.{md,csv}, as scripts/voc2012/table.sh does (environment variables: docs/TABLES.md and
# scripts/table.sh). Default rows: the baseline, logit KD and the methods of CIRKD's first table (CWD on the aux
# logits, SKD, IFVD, CIRKD); ROWS may name any config deeplabv3_r18_<row> of config/camvid.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../table.sh"

TABLE_TEACHER_ROW=deeplabv3_r101_teacher TABLE_STUDENT=deeplabv3_r18
PRESET_ROWS="deeplabv3_r18_baseline deeplabv3_r18_kd deeplabv3_r18_kd_aux_cwd deeplabv3_r18_kd_skd
    deeplabv3_r18_kd_ifvd deeplabv3_r18_kd_cirkd"
segkd_setup datasets/camvid
[ -f "$DATA/list/test.txt" ] || segkd_die "$DATA/list/test.txt: not found; prepare camvid first with" \
    "python -m tools.prepare_camvid (docs/DATASETS.md) or set DATA"
segkd_data_args
segkd_table camvid
