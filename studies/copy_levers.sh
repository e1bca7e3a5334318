#!/usr/bin/env bash
# The copy levers of docs/copying.md, as they were run: one training at a time, one thread each.
#
#   bash studies/copy_levers.sh default names1          # the recipe and the data lever, seeds 0 and 1
#   bash studies/copy_levers.sh long lr2x wide          # 3x the steps; 2x the learning rates; 4 wide layers
#   bash studies/copy_levers.sh compare                 # every run above through copy_study.py
#
# Every run is the default recipe (1,000 steps of 8 x 256 tokens, about 7 minutes at one thread)
# with the lever's flags and `--copy-every`, which logs the copy curve into the checkpoint.
# Checkpoints and logs go to runs/copy/; `compare` writes studies/results/copy_study.json and
# docs/copying/copy_curve.png.
if [ -z "${BASH_VERSION:-}" ]; then echo "error: run it with bash: bash studies/copy_levers.sh LEVER..." >&2; exit 2; fi
set -euo pipefail
cd "$(dirname "$0")/.."
LEVERS=" default names1 long lr2x wide compare "
[ $# -gt 0 ] || { echo "usage: bash studies/copy_levers.sh LEVER... (from:$LEVERS)" >&2; exit 2; }
for lever in "$@"; do
  [[ "$LEVERS" == *" $lever "* ]] || { echo "error: unknown lever '$lever' (from:$LEVERS)" >&2; exit 2; }
done
mkdir -p runs/copy

train() {  # name, seed, train_tiny.py flags...
  local name=$1 seed=$2; shift 2
  python train_tiny.py --copy-every 100 --seed "$seed" --threads 1 --force --out "runs/copy/$name-$seed.pt" "$@" \
    > "runs/copy/$name-$seed.log" 2>&1
  echo "done $name-$seed $(date +%T)"
}

for lever in "$@"; do
  case $lever in
    default) train default 0; train default 1 ;;
    names1) train names1 0 --name-share 1.0; train names1 1 --name-share 1.0 ;;
    long) train long 0 --steps 3000 ;;
    lr2x) train lr2x 0 --lr 0.012 --muon-lr 0.08 ;;
    wide) train wide 0 --n-layer 4 --d-model 184 ;;  # 4 x 184^2 ~ 8 x 128^2: the same FLOPs per token
    compare)
      arms=()
      for name in default names1 long lr2x wide; do
        runs=$(ls runs/copy/$name-*.pt 2>/dev/null | grep -v state | paste -sd, -) || true
        [ -n "$runs" ] && arms+=(--arm "$name=$runs")
      done
      python -m studies.copy_study --arm "shipped=checkpoints/tiny.pt" \
        --arm "seeds (1000 steps)=runs/seeds/base-0.pt,runs/seeds/base-1.pt,runs/seeds/base-2.pt" "${arms[@]}" \
        --json studies/results/copy_study.json --plot docs/copying ;;
  esac
done
