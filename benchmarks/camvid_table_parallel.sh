#!/bin/bash
# The CamVid table (camvid_table.py) as parallel processes sharing one cached OUT:
# for a GPU machine with many cores (on an H100 with 16 cores: 7 minutes for 3 seeds).
#   bash benchmarks/camvid_table_parallel.sh CAMVID_ROOT OUT [extra camvid_table.py flags]
# Phase 1: every seed's ancillary, half-F ancillary, F-only and full rows, and the box stores;
# phase 2: the seeds' W stores; phase 3: every F + W row of every seed, one process each.
# Each process runs one (seed, rows) pair; rows are cached, so a rerun finishes what is left.
set -u
DATA=$1; OUT=$2; shift 2
B="python3 $(dirname "$0")/camvid_table.py $DATA --out $OUT --threads 1 $*"
mkdir -p "$OUT"
phase() {
  local name=$1; shift
  for rows in "$@"; do for s in 0 1 2; do
    if [ "$rows" = box_stores ] && [ $s != 0 ]; then continue; fi
    $B --seeds $s --rows $rows >> "$OUT/log_$name.txt" 2>&1 &
  done; done
  wait
  echo "phase $name done"
}
phase 1 ancillary anc_half f_only full box_stores
phase 2 stores
phase 3 none linear online_linear conv box_fill grabcut self_training
$B --seeds 0,1,2 --json "$OUT/table.json"
