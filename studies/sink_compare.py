"""Baseline vs [SINK] model: quality and sink behaviour side by side, over seeds.

    python -m studies.sink_compare                                  # the shipped checkpoints
    python -m studies.sink_compare --arm base=runs/a0.pt,runs/a1.pt --arm sink=runs/s0.pt,runs/s1.pt
    python -m studies.sink_compare --from-json studies/results/sink_seeds.json   # print a saved comparison again
    python -m studies.sink_compare --data runs/pydoc.txt --arm base=runs/p0.pt --arm sink=runs/ps0.pt   # on your text

Each arm is one or more checkpoints trained alike except for the seed; the table gives the mean
(and the standard deviation when there are several) of, per checkpoint:
- the Monte-Carlo validation NELBO (bits/token) and the grammatical rate of greedy samples;
- for sink models, the same NELBO (same windows and masks) with [SINK] masked at test time
  (sink_variants.sink_masked): what is left of the model's quality when it can no longer abstain
  onto the sink;
- from the sink probe (minidlm/sinks.py) over held-out prompts: top-sink switch rate, Jaccard of
  consecutive sink sets, strict sinks per head, the top sink's value norm / mean value norm, and
  the attention mass on [SINK] (sink models only); and Gu et al.'s share of heads whose mean
  attention to one key exceeds 0.3, for the top content key and for [SINK].
Then the emergence curve that train_tiny.py logged in each checkpoint (sinks.training_curve_point:
largest content column mass, its value-norm ratio, mass on [SINK], against training tokens),
averaged over an arm's seeds; `--plot DIR` draws it (sink_emergence.png, plot extra).
Writes the rows, curves included, as JSON too (`--json`).
"""
from minidlm.cli import quiet_early_ctrl_c

quiet_early_ctrl_c(__name__)  # before the heavy imports: a Ctrl-C while torch loads is one line

import json
import math
import os
import statistics
import sys

import torch

from minidlm.checkpoint import CheckpointError, load_model
from minidlm.cli import (ArgumentParser, cell, die, mean_curve, number, parse_arms, device_or_die, pyplot, require_plot_extra,
                         run_main, save_figure)
from minidlm.files import numbered, preflight, write_json
from minidlm.corpus import CorpusError
from minidlm.data import fixed_windows, load_documents, token_stream
from minidlm.diffusion import evaluate_nelbo
from minidlm.evaluate import (context_problem, data_problem, held_out_prompts, sample_grammatical_rate,
                              seeds_problem)
from minidlm.sampler import SamplerConfig, generate
from minidlm.sink_variants import sink_masked
from minidlm.sinks import SinkProbe

DEFAULT_ARMS = {"baseline": ["checkpoints/tiny.pt"], "sink": ["checkpoints/tiny-sink.pt"]}
METRICS = ["nelbo", "nelbo_sink_masked", "grammatical", "switch_rate", "jaccard", "strict_sinks",
           "value_norm_ratio", "sink_mass", "heads_over_03", "sink_heads_over_03"]
GEN_LENGTH = 64     # tokens sampled after each prompt, for the grammatical rate and the probe
PROMPT_TOKENS = 24  # --data: the probe's prompts are each validation document's first tokens
PERCENT = ("grammatical", "switch_rate", "sink_mass", "heads_over_03", "sink_heads_over_03")


@torch.no_grad()
def measure(path, device, val_docs, args):
    model, tok, meta = load_model(path, device)
    if args.data is not None:  # the documents this checkpoint's own training run held out
        _, val_docs = load_documents(args.data, seed=meta.get("args", {}).get("seed", 0))
    stream = token_stream(tok, val_docs)
    windows = fixed_windows(stream, min(model.cfg.max_seq_len, len(stream)), args.windows).to(device)
    nats, _ = evaluate_nelbo(model, windows, tok.mask_id, n_mc=args.mc)
    masked = None
    if model.cfg.sink:  # the test-time ablation, on the same windows and Monte-Carlo masks
        with sink_masked(model):
            masked = evaluate_nelbo(model, windows, tok.mask_id, n_mc=args.mc)[0] / math.log(2)
    cfg = SamplerConfig(gen_length=GEN_LENGTH, steps=GEN_LENGTH, block_length=32)
    if args.data is None:
        texts = held_out_prompts(val_docs, args.prompts)
        grammatical, _, _ = sample_grammatical_rate(model, tok, texts, cfg)
        prompts = [tok.prompt(t) for t in texts]
    else:  # no grammar to score: the probe alone, prompted with each document's first tokens
        grammatical = None
        prompts = [tok.prompt(doc)[:PROMPT_TOKENS] for doc in val_docs[:args.prompts]]
    probe = SinkProbe(model, tok, list(map(len, prompts)))
    generate(model, prompts, tok.mask_id, tok.eot_id, cfg, on_step=probe, observe=True)
    s = probe.summary()
    return {"nelbo": nats / math.log(2), "nelbo_sink_masked": masked, "grammatical": grammatical,
            "switch_rate": s["switch_rate"], "jaccard": s["jaccard"], "strict_sinks": s["strict_sinks_per_head"],
            "value_norm_ratio": s["top_sink_value_norm_ratio"], "sink_mass": s.get("sink_mass"),
            "heads_over_03": s["heads_over_0.3"], "sink_heads_over_03": s.get("sink_heads_over_0.3"),
            "curve": meta.get("curve", [])}


def aggregate(name, paths, per_model):
    row = {"model": name, "checkpoints": paths}
    for m in METRICS:
        values = [r[m] for r in per_model if r[m] is not None]
        row[m] = statistics.mean(values) if values else None
        row[m + "_sd"] = statistics.stdev(values) if len(values) > 1 else None
    row["curve"] = mean_curve([r["curve"] for r in per_model])
    row["curves"] = [r["curve"] for r in per_model]
    return row


def curve_table(rows):
    """Markdown: per arm, the curve at (at most) 8 evenly spread logged steps."""
    lines = ["| model | step | tokens (M) | top content mass % | its value norm / mean | "
             "mass on [SINK] % | [SINK] value norm / mean |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        curve = row.get("curve") or []
        pick = curve[::max(1, math.ceil(len(curve) / 8))]
        if curve and pick[-1] is not curve[-1]:
            pick.append(curve[-1])
        for p in pick:
            sink = (f"{100 * p['sink_mass']:.1f} | {p['sink_value_ratio']:.2f}"
                    if p["sink_mass"] is not None else "- | -")
            lines.append(f"| {row['model']} | {p['step']} | {p['tokens'] / 1e6:.1f} | "
                         f"{100 * p['top_mass']:.1f} | {p['top_value_ratio']:.2f} | {sink} |")
    return "\n".join(lines) if len(lines) > 2 else None


def final_points_table(rows):
    """Markdown: each checkpoint's last logged curve point (seeds can differ a lot)."""
    lines = ["| model | checkpoint | top content mass % | its value norm / mean | mass on [SINK] % |",
             "|---|---|---|---|---|"]
    for row in rows:
        for path, curve in zip(row["checkpoints"], row.get("curves", [])):
            if curve:
                p = curve[-1]
                sink = f"{100 * p['sink_mass']:.1f}" if p["sink_mass"] is not None else "-"
                lines.append(f"| {row['model']} | `{path}` | {100 * p['top_mass']:.1f} | "
                             f"{p['top_value_ratio']:.2f} | {sink} |")
    return "\n".join(lines)


def plot_curves(rows, folder):
    plt = pyplot()
    os.makedirs(folder, exist_ok=True)
    panels = [("top_mass", "largest content column mass"), ("top_value_ratio", "its value norm / mean"),
              ("sink_mass", "attention mass on [SINK]")]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))

    def draw(curve, **style):  # every panel the curve has values for (no [SINK] mass without one)
        for ax, (key, _) in zip(axes, panels):
            if curve and curve[0][key] is not None:
                ax.plot([p["tokens"] / 1e6 for p in curve], [p[key] for p in curve], **style)

    for i, row in enumerate(rows):
        for curve in row.get("curves", []):  # thin: each seed
            draw(curve, color=f"C{i}", alpha=0.25, lw=0.8)
        draw(row.get("curve"), color=f"C{i}", lw=2,  # thick: the mean over seeds
             label=f"{row['model']} ({len(row['checkpoints'])} seed(s))")
    for ax, (_, title) in zip(axes, panels):
        ax.set_xlabel("training tokens (millions)")
        ax.set_title(title, fontsize=10)
    axes[1].axhline(1.0, color="grey", lw=0.8, ls=":")
    axes[0].legend(fontsize=8)
    fig.suptitle("Sink emergence during training (validation windows, half masked)", fontsize=10)
    fig.tight_layout()
    path = os.path.join(folder, "sink_emergence.png")
    save_figure(fig, path, dpi=120)
    plt.close(fig)
    return path


def metric_cell(row, m):
    """Metric m of a row (its mean and sd over seeds); "-" where it was not measured (a row saved
    before the metric existed, or a model without a [SINK])."""
    pct = m in PERCENT
    return cell([row.get(m)], ".1f" if pct else ".3f", 100 if pct else 1, sd=row.get(m + "_sd"))


def build_parser():
    p = ArgumentParser(description="Compare a baseline and a [SINK] model (arXiv 2601.19657).")
    p.add_argument("--arm", action="append", default=None, metavar="NAME=PATH[,PATH...]",
                   help="an arm and its checkpoints, one per seed (default: the shipped tiny.pt "
                        "and tiny-sink.pt)")
    p.add_argument("--from-json", default=None, metavar="PATH",
                   help="print (and plot) a comparison saved earlier with --json; measures nothing")
    p.add_argument("--data", default=None,
                   help="measure on this UTF-8 text file's validation split (the one each checkpoint's "
                        "train_tiny.py --data run held out) instead of the embedded corpus; no "
                        "grammatical rate then")
    p.add_argument("--prompts", type=number(int, 1, 100000), default=16, help="held-out prompts for samples and probe")
    p.add_argument("--windows", type=number(int, 1, 100000), default=32, help="validation windows for the NELBO")
    p.add_argument("--mc", type=number(int, 1, 1024), default=8, help="Monte-Carlo samples per window")
    p.add_argument("--json", default="studies/results/sink_compare.json", help="where to write the rows")
    p.add_argument("--plot", default=None, metavar="DIR", help="write sink_emergence.png here (plot extra)")
    p.add_argument("--device", default="auto")
    return p


def check_arms(args, arms, val_docs, device):
    """Before measuring anything: every checkpoint loads, was trained on the text it is measured
    on, holds a prompt plus the 64 sampled tokens in its context; an arm's seeds share one
    architecture and no file is given twice."""
    for name, paths in arms.items():
        models = []
        for path in paths:
            try:
                model, tok, meta = load_model(path, device)
            except CheckpointError as e:
                die(str(e))
            if model.cfg.causal:
                die(f"{path} is an autoregressive model: it has no denoising steps for sinks to move across")
            longest = (max(len(tok.prompt(t)) for t in held_out_prompts(val_docs, args.prompts))
                       if args.data is None else PROMPT_TOKENS)
            problem = (data_problem(path, meta, args.data)
                       or context_problem(path, model, longest, GEN_LENGTH, "the sink probe's samples"))
            if problem:
                die(problem)
            models.append(model)
        problem = seeds_problem(paths, models)
        if problem:
            die(f"--arm {name}: {problem}")


def measure_arms(args, arms):
    """Measure every checkpoint of every arm; one aggregated row per arm."""
    device = device_or_die(args.device)
    try:
        _, val_docs = load_documents(args.data)
    except CorpusError as e:
        die(str(e))
    check_arms(args, arms, val_docs, device)
    rows = []
    for name, paths in arms.items():
        per_model = []
        for path in paths:
            try:
                per_model.append(measure(path, device, val_docs, args))
            except CheckpointError as e:
                die(str(e))
            print(f"measured {name}: {path}", file=sys.stderr, flush=True)
        rows.append(aggregate(name, paths, per_model))
    return rows


def load_saved(path):
    """Rows written earlier by --json."""
    try:
        with open(path) as f:
            rows = json.load(f)
    except (OSError, ValueError):
        rows = None
    if not (isinstance(rows, list) and rows and all(isinstance(r, dict) and "model" in r and "checkpoints" in r
                                           for r in rows)):
        die(f"{path} is not a comparison written by sink_compare.py --json")
    return rows


def print_tables(rows, plot_folder):
    """The comparison table, then the emergence curves when the checkpoints logged them."""
    names = ["NELBO bits/token", "NELBO, [SINK] masked", "grammatical %", "switch rate %", "Jaccard",
             "strict sinks/head", "top-sink value norm / mean", "mass on [SINK] %", "heads > 0.3 on a content key %",
             "heads > 0.3 on [SINK] %"]
    shown = [(m, name) for m, name in zip(METRICS, names)  # the masked NELBO only where measured
             if m != "nelbo_sink_masked" or any(row.get(m) is not None for row in rows)]
    print("| model | seeds | " + " | ".join(name for _, name in shown) + " |")
    print("|---" * (len(shown) + 2) + "|")
    for row in rows:
        print(f"| {row['model']} | {len(row['checkpoints'])} | " + " | ".join(metric_cell(row, m) for m, _ in shown) + " |")
    table = curve_table(rows)
    if table:
        print("\nEmergence during training (train_tiny.py's log; mean over seeds):")
        print(table)
        print("\nAt the end of training, per checkpoint:")
        print(final_points_table(rows))
        if plot_folder:
            print(f"wrote {plot_curves(rows, plot_folder)}", file=sys.stderr)


def main():
    args = build_parser().parse_args()
    arms = {} if args.from_json else parse_arms(args.arm, DEFAULT_ARMS)
    checkpoints = {label: path for name, paths in arms.items()
                   for label, path in numbered(f"--arm {name}", paths).items()}
    preflight(outputs={"--json": None if args.from_json else args.json},
              folders={"--plot": (args.plot, ["sink_emergence.png"]) if args.plot else None},
              inputs={"--from-json": args.from_json, "--data": args.data, **checkpoints})
    if args.plot:
        require_plot_extra()
    rows = load_saved(args.from_json) if args.from_json else measure_arms(args, arms)
    print_tables(rows, args.plot)
    if args.json and not args.from_json:
        write_json(args.json, rows)
        print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    run_main(main)
