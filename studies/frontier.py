"""The threshold frontier: how much faster parallel decoding runs, and what it costs in quality.

    python -m studies.frontier --threads 1                 # ~10 min at one thread: the table below
    python -m studies.frontier --plot docs                 # and the figure docs/frontier.png
    python -m studies.frontier --prompts 8 --speed-prompts 2 --thresholds 0.9 --caches none,dual   # a minute

For the fixed schedule (one token per step, sample.py's default) and each threshold P
(Fast-dLLM's rule, `sample.py --threshold P`), with each cache, on held-out prompts of the
embedded corpus (the first sentence of each story), 128 tokens in blocks of 32, greedy:

- steps/token: denoising steps per generated token (1.00 for the fixed schedule). At batch 8 a
  block takes as many steps as its slowest row needs, so more than at batch 1.
- tok/s and speed-up: generated tokens per second, and over the fixed-schedule uncached sampler
  at the same batch size, in the same run. Batch 1: the first --speed-prompts prompts one by one;
  batch 8: all --prompts in batches of 8.
- grammatical: the share of complete generated sentences the corpus grammar accepts
  (corpus.grammatical_rate), over all --prompts (decoded at batch 8; rows are independent, so a
  row's tokens are those it gets alone). ARR: the Repeat Curse's adjacent repetition rate
  (repetition.py) over the same answers: does committing many tokens at once repeat?
- text tokens: the mean answer length before its first end-of-text; the rest of the 128 is
  end-of-text filler, which a confident model commits many at a time.

The default (24 prompts, 4 of them at batch 1) runs in about 10 minutes at one thread on an
idle 2-core CPU (23 on a busy shared one); the grammatical rate over 24 answers (about 300
sentences) has a standard error of about 1 point.

This is a study, not a row of bench.py: it measures quality over many prompts as well as speed.
Timing on a shared CPU moves by tens of percent between runs: compare within one run.
"""
from minidlm.cli import quiet_early_ctrl_c

quiet_early_ctrl_c(__name__)  # before the heavy imports: a Ctrl-C while torch loads is one line

import json
import os
import sys
import time

import torch

from minidlm.checkpoint import CheckpointError, load_model
from minidlm.cli import ArgumentParser, die, number, require_plot_extra, run_main, synchronize
from minidlm.corpus import grammatical_rate
from minidlm.data import load_documents
from minidlm.evaluate import continuation_text, held_out_prompts
from minidlm.files import preflight, write_json
from minidlm.repetition import clean_response, repetition_report
from minidlm.sampler import SamplerConfig, generate

CACHES = {"none": dict(cache="none"), "prefix": dict(cache="prefix"), "dual": dict(cache="dual"),
          "feature": dict(cache="feature"), "stale-first": dict(cache="feature", cache_stale_first=True)}
THRESHOLDS = "0.5,0.7,0.8,0.9,0.95,0.99"
FIGURE = "frontier.png"


def timed_generate(model, tok, prompts, cfg):
    """One generate call: (rows as lists, seconds, steps)."""
    device, stats = next(model.parameters()).device, {}
    synchronize(device)
    t0 = time.perf_counter()
    out = generate(model, prompts, tok.mask_id, tok.eot_id, cfg, stats=stats)
    synchronize(device)
    return out.tolist(), time.perf_counter() - t0, stats["steps"]


def measure(model, tok, prompts, speed_prompts, plan, gen_length, block_length, progress):
    """Every (cache, threshold) of `plan` on every batch of 8 prompts, then on each speed prompt
    alone. The settings take turns on each batch, in reverse order every other batch, so a slow
    spell of a shared machine falls on all of them alike rather than on whichever ran then."""
    cfgs = [SamplerConfig(gen_length=gen_length, steps=gen_length, block_length=block_length,
                          threshold=threshold, **CACHES[cache]) for cache, threshold in plan]
    acc = [dict(rows=[], s8=0.0, steps8=0, s1=0.0, steps1=0) for _ in plan]
    batches = [(prompts[i:i + 8], 8) for i in range(0, len(prompts), 8)] + [([p], 1) for p in speed_prompts]
    for i, (batch, size) in enumerate(batches, 1):
        for cfg, a in list(zip(cfgs, acc))[::1 if i % 2 else -1]:
            rows, seconds, steps = timed_generate(model, tok, batch, cfg)
            if size == 8:
                a["rows"] += rows
            a[f"s{size}"] += seconds
            a[f"steps{size}"] += steps
        progress(i, len(batches))
    out = []
    for (cache, threshold), a in zip(plan, acc):
        texts = [continuation_text(tok, r) for r in a["rows"]]
        cleaned = [clean_response(r, tok.eot_id, tok.is_whitespace_token) for r in a["rows"]]
        out.append({"cache": cache, "threshold": threshold,
                    "steps_per_token_b1": a["steps1"] / (len(speed_prompts) * gen_length),
                    "tok_s_b1": len(speed_prompts) * gen_length / a["s1"],
                    "steps_per_token_b8": a["steps8"] / (-(-len(prompts) // 8) * gen_length),
                    "tok_s_b8": len(prompts) * gen_length / a["s8"],
                    "grammatical": grammatical_rate(texts), "arr": repetition_report(cleaned).ARR,
                    "text_tokens": sum(len(tok.until_eot(r)) for r in a["rows"]) / len(a["rows"])})
    return out


def add_speedups(rows):
    base = next(r for r in rows if r["cache"] == "none" and r["threshold"] is None)
    for r in rows:
        r["speedup_b1"] = r["tok_s_b1"] / base["tok_s_b1"]
        r["speedup_b8"] = r["tok_s_b8"] / base["tok_s_b8"]
    return rows


def rule(threshold):
    return "fixed, 1 token/step" if threshold is None else f"P = {threshold:g}"


def print_table(rows):
    print("| cache | rule | steps/token (b1) | tok/s (b1) | speed-up (b1) | steps/token (b8) | tok/s (b8) "
          "| speed-up (b8) | grammatical | ARR | text tokens |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['cache']} | {rule(r['threshold'])} | {r['steps_per_token_b1']:.2f} | {r['tok_s_b1']:,.0f} | "
              f"{r['speedup_b1']:.2f}x | {r['steps_per_token_b8']:.2f} | {r['tok_s_b8']:,.0f} | {r['speedup_b8']:.2f}x | "
              f"{100 * r['grammatical']:.1f} % | {100 * r['arr']:.2f} % | {r['text_tokens']:.0f} |", flush=True)


def plot(rows, folder):
    """Speed-up against grammatical rate, one line per cache (P along each line), batch 1 and 8."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=False)
    for ax, b in zip(axes, ("b1", "b8")):
        for cache in dict.fromkeys(r["cache"] for r in rows):
            mine = [r for r in rows if r["cache"] == cache]
            fixed = [r for r in mine if r["threshold"] is None]
            swept = sorted((r for r in mine if r["threshold"] is not None), key=lambda r: -r["threshold"])
            line, = ax.plot([100 * r["grammatical"] for r in fixed + swept],  # from the star, P falling
                            [r[f"speedup_{b}"] for r in fixed + swept], "-", label=cache)
            ax.plot([100 * r["grammatical"] for r in swept], [r[f"speedup_{b}"] for r in swept], "o",
                    color=line.get_color())
            for r in swept:
                ax.annotate(f"{r['threshold']:g}", (100 * r["grammatical"], r[f"speedup_{b}"]), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
            for r in fixed:
                ax.plot(100 * r["grammatical"], r[f"speedup_{b}"], "*", ms=12, color=line.get_color())
        ax.set_xlabel("grammatical rate (%)")
        ax.set_ylabel("speed-up over fixed-schedule uncached (tokens/s)")
        ax.set_title(f"batch {b[1:]}: dots = threshold P, star = fixed schedule")
        ax.grid(alpha=0.3)
    axes[0].legend(title="cache")
    fig.tight_layout()
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, FIGURE)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def thresholds_list(text):
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        die(f"--thresholds takes numbers separated by commas, got {text!r}")
    if not values or not all(0 < v <= 1 for v in values):
        die(f"--thresholds must be within (0, 1], got {text!r}")
    return values


def caches_list(text):
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in CACHES]
    if unknown or not names:
        die(f"--caches takes some of {', '.join(CACHES)}, got {text!r}")
    return names


def build_parser():
    p = ArgumentParser(description="Threshold decoding against the fixed schedule: speed, steps, grammar, ARR.")
    p.add_argument("--checkpoint", default="checkpoints/tiny.pt")
    p.add_argument("--thresholds", default=THRESHOLDS, help="P values, comma-separated (default %(default)s)")
    p.add_argument("--caches", default="none,prefix,dual,feature",
                   help=f"comma-separated, of {', '.join(CACHES)} (default %(default)s)")
    p.add_argument("--prompts", type=number(int, 1, 1000), default=24,
                   help="held-out prompts for quality and batch-8 speed (default %(default)s)")
    p.add_argument("--speed-prompts", type=number(int, 1, 1000), default=4,
                   help="of them, decoded one by one for batch-1 speed (default %(default)s)")
    p.add_argument("--gen-length", type=number(int, 1, 4096), default=128)
    p.add_argument("--block-length", type=number(int, 1, 4096), default=32)
    p.add_argument("--threads", type=number(int, 1, 1024), default=None, help="torch threads (default: torch's)")
    p.add_argument("--json", default=None, metavar="PATH", help="write the rows here")
    p.add_argument("--plot", default=None, metavar="DIR", help=f"write {FIGURE} here (plot extra)")
    p.add_argument("--from-json", default=None, metavar="PATH", help="reprint saved rows (and --plot them)")
    return p


def main():
    args = build_parser().parse_args()
    thresholds, caches = thresholds_list(args.thresholds), caches_list(args.caches)
    if args.gen_length % args.block_length:
        die(f"--gen-length {args.gen_length} is not divisible by --block-length {args.block_length}")
    if args.speed_prompts > args.prompts:
        die(f"--speed-prompts {args.speed_prompts} exceeds --prompts {args.prompts}")
    preflight(outputs={"--json": args.json}, folders={"--plot": (args.plot, [FIGURE]) if args.plot else None},
              inputs={"--from-json": args.from_json} if args.from_json else {"--checkpoint": args.checkpoint})
    if args.plot:
        require_plot_extra()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.from_json:
        with open(args.from_json) as f:
            saved = json.load(f)
        print(saved["header"])
        print_table(saved["rows"])
        if args.plot:
            print(f"wrote {plot(saved['rows'], args.plot)}", file=sys.stderr)
        return
    try:
        model, tok, _ = load_model(args.checkpoint)
    except CheckpointError as e:
        die(str(e))
    room = model.cfg.max_seq_len - args.gen_length
    if room < 1:
        die(f"--gen-length {args.gen_length} leaves no room for a prompt in a context of {model.cfg.max_seq_len}")
    prompts = [tok.prompt(t)[-room:] for t in held_out_prompts(load_documents(None, seed=0)[1], args.prompts)]
    speed_prompts = prompts[:args.speed_prompts]
    header = (f"{args.checkpoint}, {len(prompts)} held-out prompts (batch 8; batch 1: the first "
              f"{len(speed_prompts)}), {args.gen_length} tokens in blocks of {args.block_length}, greedy; "
              f"cpu threads {torch.get_num_threads()}")
    print(header, flush=True)
    generate(model, prompts[:8], tok.mask_id, tok.eot_id, SamplerConfig(gen_length=args.block_length,
             steps=args.block_length, block_length=args.block_length))  # warm-up
    plan = [(c, t) for c in caches for t in [None, *thresholds]]
    if "none" not in caches:
        plan.insert(0, ("none", None))  # the baseline every speed-up is over
    t0 = time.time()
    rows = measure(model, tok, prompts, speed_prompts, plan, args.gen_length, args.block_length,
                   lambda i, n: print(f"[{i}/{n}] batches, {time.time() - t0:.0f} s", file=sys.stderr, flush=True))
    add_speedups(rows)
    print_table(rows)
    if args.json:
        write_json(args.json, {"header": header, "rows": rows})
    if args.plot:
        print(f"wrote {plot(rows, args.plot)}", file=sys.stderr)


if __name__ == "__main__":
    run_main(main)
