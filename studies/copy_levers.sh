#!/usr/bin/env bash
# The copy levers of docs/copying.md, as they were run: one training at a time, one thread each.
#
#   bash studies/copy_levers.sh names1 vocab2048 both       # the data lever, the tokenizer lever, both (seed 0)
#   SEEDS="0 1" bash studies/copy_levers.sh names1          # the same over seeds 0 and 1
#   bash studies/copy_levers.sh lr2x wide                   # 2x both learning rates; 4 wide layers
#   bash studies/copy_levers.sh heads seq512                # 8 heads of 16; windows of 512 x 4
#   bash studies/copy_levers.sh long                        # the recipe 10x longer (~85 min a seed)
#   bash studies/copy_levers.sh compare                     # every run above, the shipped models and the
#                                                           # seeds of the default recipe, through copy_study.py
#   bash studies/copy_levers.sh copyhead                    # which head copies, in the long runs and the shipped
#                                                           # model (copy_study.py --heads)
#
# Every run is the default recipe (1,000 steps of 8 x 256 tokens: about 7 minutes at one thread on
# an idle core) with the lever's flags and `--copy-every 100`, which logs the copy curve into the
# checkpoint. Checkpoints and logs go to runs/copy/; `compare` writes studies/results/copy_study.json
# and docs/copying/copy_curve.png; `copyhead` writes studies/results/copy_heads.json and
# docs/copying/copy_heads.png. The default recipe's own seeds are runs/seeds/base-{0,1,2}.pt
# (python -m studies.reproduce makes them).
if [ -z "${BASH_VERSION:-}" ]; then echo "error: run it with bash: bash studies/copy_levers.sh LEVER..." >&2; exit 2; fi
set -euo pipefail
cd "$(dirname "$0")/.."
LEVERS=" names1 vocab2048 both lr2x wide heads seq512 long compare copyhead "
SEEDS=${SEEDS:-0}
[ $# -gt 0 ] || { echo "usage: bash studies/copy_levers.sh LEVER... (from:$LEVERS)" >&2; exit 2; }
for lever in "$@"; do
  [[ "$LEVERS" == *" $lever "* ]] || { echo "error: unknown lever '$lever' (from:$LEVERS)" >&2; exit 2; }
done
mkdir -p runs/copy

train() {  # name, train_tiny.py flags...: one run per seed in $SEEDS
  local name=$1; shift
  for seed in $SEEDS; do
    python train_tiny.py --copy-every 100 --seed "$seed" --threads 1 --force --out "runs/copy/$name-$seed.pt" "$@" \
      > "runs/copy/$name-$seed.log" 2>&1
    echo "done $name-$seed $(date +%T)"
  done
}

for lever in "$@"; do
  case $lever in
    names1) train names1 --name-share 1.0 ;;       # every subject that may name the hero names it
    vocab2048) train vocab2048 --vocab-size 2048 ;;  # every name one token
    both) train both --name-share 1.0 --vocab-size 2048 ;;
    lr2x) train lr2x --lr 0.012 --muon-lr 0.08 ;;
    wide) train wide --n-layer 4 --d-model 184 ;;  # 4 x 184^2 ~ 8 x 128^2: the same FLOPs per token
    heads) train heads --n-head 8 ;;               # 8 heads of 16 dimensions instead of 4 of 32
    seq512) train seq512 --seq-len 512 --batch-size 4 ;;  # the same 2,048 tokens a step, in longer windows
                                                    # (its probe also keeps stories of 257-512 tokens)
    long) train long --steps 10000 --copy-every 500 ;;  # 10x the recipe: 20 M tokens, its schedule stretched;
                                                    # the later --copy-every wins: a point every 500 steps
    compare)
      arms=()
      for name in names1 vocab2048 both lr2x wide heads seq512 long; do
        runs=$(ls runs/copy/$name-*.pt 2>/dev/null | grep -v state | paste -sd, -) || true
        [ -n "$runs" ] && arms+=(--arm "$name=$runs")
      done
      python -m studies.copy_study --arm "shipped=checkpoints/tiny.pt" \
        --arm "default=runs/seeds/base-0.pt,runs/seeds/base-1.pt,runs/seeds/base-2.pt" "${arms[@]}" \
        --json studies/results/copy_study.json --plot docs/copying ;;
    copyhead)
      runs=$(ls runs/copy/long-*.pt 2>/dev/null | grep -v state | paste -sd, -) || true
      [ -n "$runs" ] || { echo "error: no runs/copy/long-*.pt: run 'bash studies/copy_levers.sh long' first" >&2; exit 2; }
      python -m studies.copy_study --heads --arm "shipped=checkpoints/tiny.pt" --arm "long=$runs" \
        --json studies/results/copy_heads.json --plot docs/copying ;;
  esac
done
