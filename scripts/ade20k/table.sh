#!/usr/bin/env bash
# The CIRKD table on ADE20K val (2,000 images, short side 512, whole image): the DeepLabV3-R101 teacher, the
# DeepLabV3-R18 baseline and distilled students (config/ade20k, CIRKD's recipe; docs/DATASETS.md).
#
#   python -m tools.prepare_ade20k --dest datasets/ade20k --archive ADEChallengeData2016.zip   # first
#   NPROC=8 scripts/ade20k/table.sh
#   TEACHER=teachers/deeplabv3_r101_ade20k.pth scripts/ade20k/table.sh   # an imported teacher
#   ROWS="deeplabv3_r18_baseline deeplabv3_r18_kd deeplabv3_r18_kd_fitnet" SEEDS="1" scripts/ade20k/table.sh
#
# Trains the teacher once, each student row for each seed, evaluates every run and writes
# $RUNS/ade20k/table.{md,csv}, as scripts/voc2012/table.sh does (environment variables: docs/TABLES.md and
# scripts/table.sh). Default rows: the baseline, logit KD and the methods of CIRKD's first table (CWD on the aux
# logits, SKD, IFVD, CIRKD); ROWS may name any config deeplabv3_r18_<row> of config/ade20k.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../table.sh"

TABLE_TEACHER_ROW=deeplabv3_r101_teacher TABLE_STUDENT=deeplabv3_r18
PRESET_ROWS="deeplabv3_r18_baseline deeplabv3_r18_kd deeplabv3_r18_kd_aux_cwd deeplabv3_r18_kd_skd
    deeplabv3_r18_kd_ifvd deeplabv3_r18_kd_cirkd"
segkd_setup datasets/ade20k
[ -f "$DATA/list/val.txt" ] || segkd_die "$DATA/list/val.txt: not found; prepare ade20k first with" \
    "python -m tools.prepare_ade20k (docs/DATASETS.md) or set DATA"
segkd_data_args
segkd_table ade20k
