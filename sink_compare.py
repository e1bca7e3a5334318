"""Baseline vs [SINK] model: quality and sink behaviour side by side, over seeds.

    python sink_compare.py                                  # the shipped checkpoints
    python sink_compare.py --arm base=runs/a0.pt,runs/a1.pt --arm sink=runs/s0.pt,runs/s1.pt

Each arm is one or more checkpoints trained alike except for the seed; the table gives the mean
(and the standard deviation when there are several) of, per checkpoint:
- the Monte-Carlo validation NELBO (bits/token) and the grammatical rate of greedy samples;
- from the sink probe (minidlm/sinks.py) over held-out prompts: top-sink switch rate, Jaccard of
  consecutive sink sets, strict sinks per head, the top sink's value norm / mean value norm, and
  the attention mass on [SINK] (sink models only).
Writes the rows as JSON too (`--json`).
"""
import json
import math
import os
import statistics
import sys

import torch

from minidlm.checkpoint import CheckpointError, load_model
from minidlm.cli import ArgumentParser, die, pick_device, positive_int
from minidlm.data import fixed_windows, load_documents, token_stream
from minidlm.diffusion import evaluate_nelbo
from minidlm.evaluate import held_out_prompts, sample_grammatical_rate
from minidlm.sampler import SamplerConfig, generate
from minidlm.sinks import SinkProbe

DEFAULT_ARMS = {"baseline": ["checkpoints/tiny.pt"], "sink": ["checkpoints/tiny-sink.pt"]}
METRICS = ["nelbo", "grammatical", "switch_rate", "jaccard", "strict_sinks", "value_norm_ratio",
           "sink_mass"]


def measure(path, device, val_docs, args):
    model, tok, _ = load_model(path, device)
    windows = fixed_windows(token_stream(tok, val_docs), model.cfg.max_seq_len, args.windows).to(device)
    nats, _ = evaluate_nelbo(model, windows, tok.mask_id, n_mc=args.mc)
    cfg = SamplerConfig(gen_length=64, steps=64, block_length=32)
    texts = held_out_prompts(val_docs, args.prompts)
    grammatical, _, _ = sample_grammatical_rate(model, tok, texts, cfg)
    prompts = [[tok.eot_id] + tok.encode(t) for t in texts]
    probe = SinkProbe(model, tok, list(map(len, prompts)))
    generate(model, prompts, tok.mask_id, tok.eot_id, cfg, on_step=probe, observe=True)
    s = probe.summary()
    return {"nelbo": nats / math.log(2), "grammatical": grammatical, "switch_rate": s["switch_rate"],
            "jaccard": s["jaccard"], "strict_sinks": s["strict_sinks_per_head"],
            "value_norm_ratio": s["top_sink_value_norm_ratio"], "sink_mass": s.get("sink_mass")}


def aggregate(name, paths, per_model):
    row = {"model": name, "checkpoints": paths}
    for m in METRICS:
        values = [r[m] for r in per_model if r[m] is not None]
        row[m] = statistics.mean(values) if values else None
        row[m + "_sd"] = statistics.stdev(values) if len(values) > 1 else None
    return row


def cell(row, m):
    if row[m] is None:
        return "-"
    pct = m in ("grammatical", "switch_rate", "sink_mass")
    value = f"{100 * row[m]:.1f}" if pct else f"{row[m]:.3f}"
    sd = row[m + "_sd"]
    return value + (f" +- {100 * sd if pct else sd:.{1 if pct else 3}f}" if sd is not None else "")


def main():
    p = ArgumentParser(description="Compare a baseline and a [SINK] model (arXiv 2601.19657).")
    p.add_argument("--arm", action="append", default=None, metavar="NAME=PATH[,PATH...]",
                   help="an arm and its checkpoints, one per seed (default: the shipped tiny.pt "
                        "and tiny-sink.pt)")
    p.add_argument("--prompts", type=positive_int, default=16, help="held-out prompts for samples and probe")
    p.add_argument("--windows", type=positive_int, default=32, help="validation windows for the NELBO")
    p.add_argument("--mc", type=positive_int, default=8, help="Monte-Carlo samples per window")
    p.add_argument("--json", default="results/sink_compare.json")
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    arms = DEFAULT_ARMS
    if args.arm:
        try:
            arms = {name: paths.split(",") for name, paths in (a.split("=", 1) for a in args.arm)}
        except ValueError:
            die("--arm takes NAME=PATH[,PATH...]")
    try:
        device = pick_device(args.device)
    except ValueError as e:
        die(str(e))
    _, val_docs = load_documents(None)
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
    names = ["NELBO bits/token", "grammatical %", "switch rate %", "Jaccard", "strict sinks/head",
             "top-sink value norm / mean", "mass on [SINK] %"]
    print("| model | seeds | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 2) + "|")
    for row in rows:
        print(f"| {row['model']} | {len(row['checkpoints'])} | " + " | ".join(cell(row, m) for m in METRICS) + " |")
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
        print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    with torch.no_grad():
        main()
