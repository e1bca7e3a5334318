"""The training-recipe ablation: today's recipe, each lever alone, and the default, over seeds.

    python -m studies.ablation                                  # embedded corpus, seeds 0 1
    python -m studies.ablation --data runs/pydoc.txt --rows first-round,default --json studies/results/ablation-pydoc.json
    python -m studies.ablation --from-json studies/results/ablation.json    # print a saved table again
    python -m studies.ablation --rows default,fp32,plain-ce,batch-4 --steps 550 --seeds 1 --json r1.json  # one seed
    python -m studies.ablation --from-json r0.json r1.json          # seeds run side by side, as one table

Every row is `python train_tiny.py` with the flags below, run twice per seed: once for the same
number of training tokens as the default recipe's run of `--steps` steps (equal TOKENS), and once
for the wall time that run took on this machine in this invocation (equal TIME, `--minutes`; the
schedule then runs on time). The budget is a short run (default 200 steps of the default batch,
0.4 M tokens), where the recipes differ most: how fast each leaves the unigram plateau.
Rows whose throughput equals the default's would only repeat themselves, so the equal-time run is
skipped where a row trains at the default's tokens/s within 3 % and its equal-token result is
reused (the table says so). Each cell is the mean +- sd over seeds of the full validation NELBO
(train_tiny.py's final evaluation, `evaluate_nelbo` with 16 samples per window), beside the
unigram entropy of the validation text, the grammatical rate (embedded corpus only) and tokens/s.
Rows: the first round's recipe with one lever added each (first-round, muon, mid-t, arch), the
default, and levers on top of the default (fp32, plain-ce, batch-4). Runs go to runs/ablation/;
JSON rows to --json.
"""
from minidlm.cli import quiet_early_ctrl_c

quiet_early_ctrl_c(__name__)  # before the heavy imports: a Ctrl-C while torch loads is one line

import json
import math
import os
import shlex
import statistics
import subprocess
import sys

from minidlm.checkpoint import CheckpointError, read
from minidlm.train import TrainConfig
from minidlm.cli import ArgumentParser, cell, die, number, run_main
from minidlm.evaluate import trained_on
from minidlm.files import numbered, preflight, same_file, write_json

# key: (what it shows, train_tiny.py flags on top of the default recipe)
# the first round: AdamW 2e-3 with a linear warm-up over the first 1/8 of the run (100 of its 800
# steps; WARMUP is replaced by 1/8 of each run's steps), cosine decay, batch 16, GELU, t ~ U[0, 1]
FIRST_ROUND = ["--optimizer", "adamw", "--lr", "2e-3", "--t-min", "0", "--t-max", "1", "--no-plain-ce",
               "--schedule", "cosine", "--warmup", "WARMUP", "--batch-size", "16", "--no-qk-norm", "--no-relu2",
               "--no-zero-init", "--no-unigram-bias"]
ROWS = {
    "first-round": ("the first round's recipe (AdamW, t ~ U[0, 1], 1/p, cosine, batch 16, GELU)", FIRST_ROUND),
    "muon": ("first round + Muon on the blocks' matrices", FIRST_ROUND + ["--optimizer", "muon"]),
    "mid-t": ("first round + t ~ U[0.15, 0.85]", FIRST_ROUND + ["--t-min", "0.15", "--t-max", "0.85"]),
    "arch": ("first round + QK-norm, ReLU^2, zero-init projections, unigram output bias",
             FIRST_ROUND + ["--qk-norm", "--relu2", "--zero-init", "--unigram-bias"]),
    "default": ("the default recipe (all of the above, its schedule and batch)", []),
    # levers on top of the default (the second round)
    "fp32": ("the default in float32 (--no-bf16: no bf16 autocast where the CPU has native bf16)", ["--no-bf16"]),
    "plain-ce": ("the default trained on plain masked CE (no 1/p weight)", ["--plain-ce"]),
    "batch-4": ("the default at batch 4 x 256 (twice the steps for the same tokens)", ["--batch-size", "4"]),
}
SAME_SPEED = 0.03


def run(flags, out, log):
    """Train (or reuse a finished run of exactly this command at `out`) and return its metrics."""
    command = [sys.executable, "train_tiny.py", "--out", out, "--force", *flags]
    shown = "python " + " ".join(shlex.quote(a) for a in command[1:])  # as train_tiny records it
    try:
        done = os.path.exists(out) and read(out)["meta"]
    except (CheckpointError, KeyError, TypeError):  # not a finished run of ours: train it again
        done = None
    if done and done.get("command") == shown and done.get("metrics"):
        print(f"reusing {out}", file=sys.stderr, flush=True)
    else:
        print("$ " + shown, file=sys.stderr, flush=True)
        with open(log, "w") as f:
            result = subprocess.run(command, stderr=f, stdout=f)
        if result.returncode != 0:
            die(f"training failed (exit {result.returncode}); see {log}", code=1)
    meta = read(out)["meta"]
    m = meta["metrics"]
    se = m["val_nelbo_se"] if "val_nelbo_se" in m else m["val_nll_se"]  # the bound, or an AR run's exact NLL
    return {"bits": m["val_bits_per_token"], "se_bits": se / math.log(2),
            "unigram_bits": m["unigram_bits_per_token"], "grammatical": m.get("grammatical_rate"),
            "tokens": m["tokens_seen"], "minutes": m["train_minutes"],
            "tok_s": m["tokens_seen"] / (60 * m["train_minutes"]), "command": meta["command"]}


def table(results):
    lines = ["| row | equal tokens: NELBO bits | equal time: NELBO bits | unigram bits | grammatical "
             "(equal tokens) | tokens/s | what |", "|---|---|---|---|---|---|---|"]
    for key, r in results["rows"].items():
        same = " (= equal tokens)" if r["time_reused"] else ""
        lines.append(
            f"| {key} | {cell([x['bits'] for x in r['tokens']], '.3f')} "
            f"| {cell([x['bits'] for x in r['time']], '.3f')}{same} "
            f"| {statistics.mean(x['unigram_bits'] for x in r['tokens']):.2f} "
            f"| {cell([x['grammatical'] for x in r['tokens']], '.1%')} "
            f"| {statistics.mean(x['tok_s'] for x in r['tokens']):,.0f} | {ROWS[key][0]} |")
    return "\n".join(lines)


def build_parser():
    p = ArgumentParser(description="Ablate the training recipe at equal tokens and equal wall time.")
    p.add_argument("--data", default=None, help="a UTF-8 text file (default: the embedded corpus)")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, from: {', '.join(ROWS)}")
    p.add_argument("--seeds", type=number(int, lo=0, hi=2**31 - 1), nargs="+", default=[0, 1])
    p.add_argument("--steps", type=number(int, lo=1, hi=10**6), default=200,
                   help="steps of the default recipe; the other rows get as many tokens (default %(default)s)")
    p.add_argument("--threads", type=number(int, lo=1, hi=1024), default=None)
    p.add_argument("--json", default="studies/results/ablation.json", help="where the rows go (default %(default)s)")
    p.add_argument("--from-json", default=None, nargs="+", metavar="PATH",
                   help="print a saved ablation and exit; several files (e.g. one per seed, run side "
                        "by side) are merged into one table")
    return p


def main():
    args = build_parser().parse_args()
    preflight(outputs={"--json": None if args.from_json else args.json},
              inputs={"--data": args.data, **numbered("--from-json", args.from_json or [])})
    if args.from_json:
        try:
            saved = []
            for path in args.from_json:
                with open(path) as f:
                    saved.append(json.load(f))
            merged = merge(saved)
        except (OSError, ValueError, KeyError, TypeError) as e:
            die(f"cannot merge {' '.join(args.from_json)}: {e}")
        print(f"data: {merged['data']}; seeds {', '.join(map(str, merged['seeds']))}")
        print(table(merged))
        return
    keys = [k.strip() for k in args.rows.split(",")]
    unknown = [k for k in keys if k not in ROWS]
    if unknown or "default" not in keys:
        die(f"--rows must name rows from {', '.join(ROWS)} and include 'default'; got {args.rows}")
    keys = ["default"] + [k for k in keys if k != "default"]  # the default first: it sets the budget
    common = (["--data", args.data] if args.data else []) + (["--threads", str(args.threads)] if args.threads else [])
    name = os.path.splitext(os.path.basename(args.data))[0] if args.data else "embedded"
    check_runs([f"runs/ablation/{name}-{key}-{seed}{end}" for key in keys for seed in args.seeds
                for end in ("", "-time")], args.data)
    os.makedirs("runs/ablation", exist_ok=True)
    defaults = TrainConfig()
    results = {"data": args.data or "embedded corpus", "seeds": args.seeds, "rows": {}}
    for key in keys:
        row = results["rows"][key] = {"tokens": [], "time": [], "time_reused": True}
        for seed in args.seeds:
            base = results["rows"]["default"]["tokens"][args.seeds.index(seed)] if key != "default" else None
            out = f"runs/ablation/{name}-{key}-{seed}"
            steps = args.steps * defaults.batch_size // batch_size(ROWS[key][1], defaults)
            flags = common + ["--seed", str(seed), "--steps", str(steps)]
            flags += [str(max(1, steps // 8)) if f == "WARMUP" else f for f in ROWS[key][1]]
            r = run(flags, out + ".pt", out + ".log")
            row["tokens"].append(r)
            if base is None or abs(r["tok_s"] / base["tok_s"] - 1) <= SAME_SPEED:
                row["time"].append(r)
            else:  # equal time: the default run's minutes, the schedule running on time
                row["time_reused"] = False
                row["time"].append(run(flags + ["--steps", "1000000", "--minutes", f"{base['minutes']:.3f}"],
                                       out + "-time.pt", out + "-time.log"))
        print(table(results), file=sys.stderr, flush=True)
        write_json(args.json, results)
    print(f"data: {results['data']}; seeds {', '.join(map(str, args.seeds))}")
    print(table(results))


def check_runs(stems, data):
    """Before any training: the runs this ablation writes (STEM.pt, its .state.pt and STEM.log)
    are not --data, and none replaces a run made on another text that has the same file name
    (a/notes.txt and b/notes.txt both write runs/ablation/notes-*)."""
    outputs = {f"run {stem}{ext}": stem + ext for stem in stems for ext in (".pt", ".state.pt", ".log")}
    preflight(outputs=outputs, inputs={"--data": data})
    for stem in stems:
        if not os.path.exists(stem + ".pt"):
            continue
        try:
            recorded = trained_on(read(stem + ".pt")["meta"])
        except (CheckpointError, KeyError, TypeError):
            continue  # not a finished run: retrained, as `run` does
        same = recorded == data if recorded is None or data is None else same_file(recorded, data)
        if not same:
            die(f"{stem}.pt is a run on {recorded or 'the embedded corpus'}, not on "
                f"{data or 'the embedded corpus'}: this ablation would replace it; move runs/ablation/ "
                f"aside or rename your text file")


def merge(saved: list) -> dict:
    """One ablation from several saved ones over the same rows and data (their seeds pooled)."""
    if len({r["data"] for r in saved}) > 1 or len({tuple(r["rows"]) for r in saved}) > 1:
        raise ValueError("the files ablate different data or rows")
    seeds = [s for r in saved for s in r["seeds"]]
    if len(set(seeds)) < len(seeds):
        raise ValueError(f"a seed appears twice ({seeds})")
    merged = {"data": saved[0]["data"], "seeds": seeds, "rows": {}}
    for key in saved[0]["rows"]:
        rows = [r["rows"][key] for r in saved]
        merged["rows"][key] = {"tokens": [x for r in rows for x in r["tokens"]],
                               "time": [x for r in rows for x in r["time"]],
                               "time_reused": all(r["time_reused"] for r in rows)}
    return merged


def batch_size(flags, defaults) -> int:
    """The batch size a row trains with: its own --batch-size, else train_tiny.py's default."""
    return int(flags[flags.index("--batch-size") + 1]) if "--batch-size" in flags else defaults.batch_size



if __name__ == "__main__":
    run_main(main)
