#!/usr/bin/env bash
# The sink levers of docs/sink-levers.md (issue 12), as they were run.
#
#   bash studies/sink_levers.sh default backcopy pydoc      # screen levers: seed 0, baseline + zero-value [SINK]
#   bash studies/sink_levers.sh backcopy-seeds               # the backcopy lever over 2 seeds, with both [SINK]s
#   bash studies/sink_levers.sh backcopy-seed2               # its third seed (baseline, zero-value [SINK])
#   bash studies/sink_levers.sh backcopy-long                # 5x the tokens (5,000 steps): no sink, both [SINK]s
#
# Each screened lever trains the default recipe with the lever's flags twice, side by side, one
# thread each (about 10 minutes on 2 cores): without a [SINK] and with the zero-value [SINK]; then
# sink_compare.py measures the pair and draws its emergence curves into docs/levers/LEVER/.
# Checkpoints and logs go to runs/levers/, the rows (curves included) to studies/results/levers/.
# sh (dash on Debian and Ubuntu) has no pipefail and no [[ ]]: say so in one line, not a cryptic failure
if [ -z "${BASH_VERSION:-}" ]; then echo "error: run it with bash: bash studies/sink_levers.sh LEVER..." >&2; exit 2; fi
set -euo pipefail
cd "$(dirname "$0")/.."
LEVERS=" default backcopy pydoc wd0 lr2x heads8 seq512 depth12 backcopy-seeds backcopy-seed2 backcopy-long "
[ $# -gt 0 ] || { echo "usage: bash studies/sink_levers.sh LEVER... (from:$LEVERS)" >&2; exit 2; }
for lever in "$@"; do
  [[ "$LEVERS" == *" $lever "* ]] || { echo "error: unknown lever '$lever' (from:$LEVERS)" >&2; exit 2; }
done
mkdir -p runs/levers studies/results/levers docs/levers
[ -f runs/backcopy.txt ] || python -m minidlm.backcopy runs/backcopy.txt
[ -f runs/pydoc.txt ] || python -m minidlm.prose pydoc runs/pydoc.txt

screen() {  # name, data file or "", train_tiny.py flags...
  local name=$1 data=$2; shift 2
  local dataflag=(); [ -n "$data" ] && dataflag=(--data "$data")
  python train_tiny.py --curve-every 100 --seed 0 --threads 1 --force --out "runs/levers/$name-base-0.pt" "${dataflag[@]}" "$@" \
    > "runs/levers/$name-base-0.log" 2>&1 &
  python train_tiny.py --curve-every 100 --seed 0 --threads 1 --force --out "runs/levers/$name-zsink-0.pt" --sink --sink-value zero \
    "${dataflag[@]}" "$@" > "runs/levers/$name-zsink-0.log" 2>&1 &
  wait
  python -m studies.sink_compare "${dataflag[@]}" --arm "$name=runs/levers/$name-base-0.pt" \
    --arm "$name+zero-value-sink=runs/levers/$name-zsink-0.pt" \
    --json "studies/results/levers/$name.json" --plot "docs/levers/$name" > "runs/levers/$name-compare.log" 2>&1
  echo "done $name $(date +%T)"
}

backcopy_seeds() {  # seed 1 of both arms, the paper's learned [SINK] for seeds 0 and 1, all compared
  local bc=(python train_tiny.py --curve-every 100 --data runs/backcopy.txt --threads 1 --force)
  "${bc[@]}" --seed 1 --out runs/levers/backcopy-base-1.pt > runs/levers/backcopy-base-1.log 2>&1 &
  "${bc[@]}" --seed 1 --sink --sink-value zero --out runs/levers/backcopy-zsink-1.pt > runs/levers/backcopy-zsink-1.log 2>&1 &
  wait
  "${bc[@]}" --seed 0 --sink --out runs/levers/backcopy-sink-0.pt > runs/levers/backcopy-sink-0.log 2>&1 &
  "${bc[@]}" --seed 1 --sink --out runs/levers/backcopy-sink-1.pt > runs/levers/backcopy-sink-1.log 2>&1 &
  wait
  python -m studies.sink_compare --data runs/backcopy.txt \
    --arm backcopy=runs/levers/backcopy-base-0.pt,runs/levers/backcopy-base-1.pt \
    --arm backcopy+sink=runs/levers/backcopy-sink-0.pt,runs/levers/backcopy-sink-1.pt \
    --arm backcopy+zero-value-sink=runs/levers/backcopy-zsink-0.pt,runs/levers/backcopy-zsink-1.pt \
    --json studies/results/levers/backcopy-2seeds.json --plot docs/levers/backcopy-2seeds > runs/levers/backcopy-2seeds-compare.log 2>&1
  for c in base-0 base-1 sink-0 sink-1 zsink-0 zsink-1; do
    echo "$c: $(python -m minidlm.backcopy --score "runs/levers/backcopy-$c.pt")"
  done > runs/levers/backcopy-scores.log
  echo "done backcopy-seeds $(date +%T)"
}

backcopy_seed2() {  # the third seed of the baseline and the zero-value [SINK], then all seeds compared
  local bc=(python train_tiny.py --curve-every 100 --data runs/backcopy.txt --threads 1 --force --seed 2)
  "${bc[@]}" --out runs/levers/backcopy-base-2.pt > runs/levers/backcopy-base-2.log 2>&1 &
  "${bc[@]}" --sink --sink-value zero --out runs/levers/backcopy-zsink-2.pt > runs/levers/backcopy-zsink-2.log 2>&1 &
  wait
  local b=runs/levers/backcopy
  python -m studies.sink_compare --data runs/backcopy.txt --arm "backcopy=$b-base-0.pt,$b-base-1.pt,$b-base-2.pt" \
    --arm "backcopy+sink=$b-sink-0.pt,$b-sink-1.pt" \
    --arm "backcopy+zero-value-sink=$b-zsink-0.pt,$b-zsink-1.pt,$b-zsink-2.pt" \
    --json studies/results/levers/backcopy-3seeds.json --plot docs/levers/backcopy-3seeds > $b-3seeds-compare.log 2>&1
  for c in base-2 zsink-2; do echo "$c: $(python -m minidlm.backcopy --score "$b-$c.pt")"; done >> $b-scores.log
  echo "done backcopy-seed2 $(date +%T)"
}

backcopy_long() {  # seed 0, 5x the default's tokens: the three arms (the third one after the first two)
  local bc=(python train_tiny.py --data runs/backcopy.txt --threads 1 --force --seed 0 --steps 5000
            --curve-every 250 --eval-interval 500)
  mkdir -p runs/long
  "${bc[@]}" --out runs/long/backcopy-base.pt > runs/long/backcopy-base.log 2>&1 &
  "${bc[@]}" --sink --sink-value zero --out runs/long/backcopy-zsink.pt > runs/long/backcopy-zsink.log 2>&1 &
  wait
  "${bc[@]}" --sink --out runs/long/backcopy-sink.pt > runs/long/backcopy-sink.log 2>&1
  python -m studies.sink_compare --data runs/backcopy.txt --arm backcopy-5x=runs/long/backcopy-base.pt \
    --arm backcopy-5x+sink=runs/long/backcopy-sink.pt --arm backcopy-5x+zero-value-sink=runs/long/backcopy-zsink.pt \
    --json studies/results/levers/backcopy-long.json --plot docs/levers/backcopy-long > runs/long/compare.log 2>&1
  for c in base sink zsink; do echo "$c: $(python -m minidlm.backcopy --score "runs/long/backcopy-$c.pt")"; done \
    > runs/long/scores.log
  echo "done backcopy-long $(date +%T)"
}

for lever in "$@"; do
  case $lever in
    default)  screen default "" ;;
    backcopy) screen backcopy runs/backcopy.txt ;;
    pydoc)    screen pydoc runs/pydoc.txt ;;
    wd0)      screen wd0 "" --weight-decay 0 ;;
    lr2x)     screen lr2x "" --muon-lr 0.08 --lr 1.2e-2 ;;
    heads8)   screen heads8 "" --n-head 8 ;;
    seq512)   screen seq512 "" --seq-len 512 --batch-size 4 ;;
    depth12)  screen depth12 "" --n-layer 12 ;;
    backcopy-seeds) backcopy_seeds ;;
    backcopy-seed2) backcopy_seed2 ;;
    backcopy-long)  backcopy_long ;;
  esac
done
