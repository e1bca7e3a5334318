"""Why diffusion? The same network trained left to right, against the diffusion model.

    python -m studies.ar_compare --threads 1          # 3 seeds x 3 arms x 2 objectives, then the measures
    python -m studies.ar_compare --seeds 0 1 --arms embedded        # fewer runs
    python -m studies.ar_compare --from-json studies/results/ar_compare.json   # print the saved tables again

Every training is `python train_tiny.py --objective {ar,diffusion}` with the same flags: the same
network, tokenizer, data, optimizer recipe, schedule and token budget (`--steps`, at a stated
shape: `--n-layer`, default 4 of the recipe's 8, so that 18 trainings fit in about an hour at one
thread). Three arms: the embedded corpus; Python's own documentation (pydoc_data.topics, shipped
with the interpreter) as real prose; and repeated data, a tenth of the embedded corpus's documents
for the same budget, so ten times as many epochs (validation as in the first arm). Runs go to
runs/ar_compare/ and are reused when their recorded command matches. Then, per seed:

- bits/token on the validation windows: the autoregressive model's EXACT negative log-likelihood
  against the diffusion model's NELBO, an upper bound on its NLL (its true NLL is lower by an
  unknown amount); at equal tokens (the end of both runs) and at equal wall time. The runs' own
  clocks are not comparable on a shared machine (another job slows one run and not the other), so
  the two training steps are timed here, interleaved, in one process (`throughput`): the faster
  objective's final number is read against the slower one's validation curve at the tokens it
  reaches in the same time (linearly between its evaluations);
- the grammatical rate (embedded corpus only: the recognizer is that grammar's) of greedy and of
  sampled (temperature 1) continuations of 64 tokens after held-out first sentences; diffusion:
  64 steps in blocks of 32, as train_tiny.py measures it;
- infilling (studies/infill_study.py's holes and scoring): the hero's name or the object blanked
  where introduced; the autoregressive model sees only the left side, the diffusion model both
  sides (and, for reference, the left side only);
- decoding speed (seed 0's models, 64 tokens, batch 1 and 8, best of --repeats after a warm-up):
  autoregressive with its K/V cache and without it; diffusion with the fixed schedule (one token
  per step) without a cache and with the dual cache (the fastest in bench.py).

Tables go to stdout (mean +- sd over seeds), rows to --json, the figure (validation curves of
every arm against training time or tokens) to --plot.
"""
from minidlm.cli import quiet_early_ctrl_c

quiet_early_ctrl_c(__name__)  # before the heavy imports: a Ctrl-C while torch loads is one line

import json
import os
import statistics
import sys
from dataclasses import replace

import numpy as np
import torch

from minidlm.autoregressive import ar_generate, ar_generate_uncached
from minidlm.checkpoint import load_model, read
from minidlm.cli import (ArgumentParser, cell, die, number, device_or_die, pyplot, require_plot_extra, run_main,
                         save_figure, timed)
from minidlm.data import load_documents
from minidlm.evaluate import held_out_prompts, sample_grammatical_rate
from minidlm.files import preflight, write_json, write_text
from minidlm.prose import pydoc_text
from minidlm.model import DiffusionLM, ModelConfig
from minidlm.optim import build_optimizers
from minidlm.sampler import SamplerConfig, generate
from minidlm.train import TrainConfig, bf16_autocast, train_step
from studies.ablation import run as train
from studies.infill_study import TARGETS, measure

ARMS = {  # name: (what, train_tiny.py flags); PYDOC: the text file, written into --runs
    "embedded": ("the embedded corpus", []),
    "pydoc": ("Python's documentation (pydoc) as prose", ["--data", "PYDOC"]),
    "tenth": ("a tenth of the embedded corpus, 10x the epochs", ["--train-fraction", "0.1"]),
}
OBJECTIVES = {"ar": "autoregressive (exact NLL)", "diffusion": "diffusion (NELBO, a bound)"}
GEN = 64  # tokens per continuation, for the grammatical rate and the speed


def build_parser():
    p = ArgumentParser(description="The autoregressive baseline against the diffusion model: same network, "
                                   "same budget.")
    p.add_argument("--seeds", type=number(int, 0, 2**31 - 1), nargs="+", default=[0, 1, 2])
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, from: {', '.join(ARMS)}")
    p.add_argument("--steps", type=number(int, 1, 10**6), default=300, help="training steps of each run (default %(default)s)")
    p.add_argument("--n-layer", type=number(int, 1, 64), default=4, help="depth of both models (default %(default)s)")
    p.add_argument("--evals", type=number(int, 1, 100), default=6, help="validations along each run (default %(default)s)")
    p.add_argument("--prompts", type=number(int, 1, 1000), default=64, help="held-out prompts for the grammatical rate")
    p.add_argument("--stories", type=number(int, 1, 1000), default=200, help="held-out stories for infilling")
    p.add_argument("--repeats", type=number(int, 1, 100), default=2, help="timed decodes per setting (best counts)")
    p.add_argument("--threads", type=number(int, 1, 1024), default=None, help="torch CPU threads, here and in training")
    p.add_argument("--device", default="cpu", help="where the measures run (training: train_tiny.py's auto)")
    p.add_argument("--runs", default="runs/ar_compare", metavar="DIR",
                   help="where the trainings go; finished ones with the same command are reused (default %(default)s)")
    p.add_argument("--json", default="studies/results/ar_compare.json", help="where the rows go (default %(default)s)")
    p.add_argument("--plot", default="docs", metavar="DIR",
                   help="write ar_vs_diffusion.png here (default %(default)s; 'none' for no figure)")
    p.add_argument("--from-json", default=None, metavar="PATH", help="print a saved comparison and exit")
    return p


def pydoc_path(args) -> str:
    return os.path.join(args.runs, "pydoc.txt")


def train_arm(arm, seed, args) -> dict:
    """Both objectives' runs of one arm and seed: {objective: final metrics + the validation curve}."""
    out = {}
    for objective in OBJECTIVES:
        flags = ["--objective", objective, "--seed", str(seed), "--steps", str(args.steps), "--n-layer",
                 str(args.n_layer), "--eval-interval", str(max(1, args.steps // args.evals))]
        flags += [pydoc_path(args) if f == "PYDOC" else f for f in ARMS[arm][1]]
        flags += ["--threads", str(args.threads)] if args.threads else []
        path = os.path.join(args.runs, f"{arm}-{objective}-{seed}")
        r = train(flags, path + ".pt", path + ".log")
        meta = read(path + ".pt")["meta"]
        r.update(path=path + ".pt", evals=meta.get("evals", []),
                 train_seconds=meta["metrics"]["train_minutes"] * 60)
        out[objective] = r
    return out


def throughput(args, device, rounds=6, steps=3) -> dict:
    """Training tokens/s of each objective at the study's shape and batch, timed in this process
    with the rounds interleaved, so that both see the same load (random tokens, train_tiny.py's
    recipe and arithmetic)."""
    cfg, recipe = ModelConfig(n_layer=args.n_layer), TrainConfig()
    x0 = torch.randint(0, cfg.vocab_size - 2, (recipe.batch_size, cfg.max_seq_len), device=device)
    steps_of, seconds = {}, dict.fromkeys(OBJECTIVES, 0.0)
    for objective in OBJECTIVES:
        torch.manual_seed(0)
        model = DiffusionLM(replace(cfg, causal=objective == "ar")).to(device).train()
        opts = build_optimizers(model, recipe.optimizer, recipe.lr, recipe.muon_lr, recipe.weight_decay)
        g = torch.Generator(device=device).manual_seed(0)
        tcfg = replace(recipe, objective=objective)
        steps_of[objective] = lambda m=model, o=opts, g=g, t=tcfg: train_step(
            m, o, x0, cfg.vocab_size - 1, g, t, autocast=bf16_autocast(device), bos_id=cfg.vocab_size - 2)
        steps_of[objective]()  # warm-up
    for _ in range(rounds):
        for objective in OBJECTIVES:
            seconds[objective] += timed(device, lambda: [steps_of[objective]() for _ in range(steps)])[1]
    return {o: rounds * steps * x0.numel() / seconds[o] for o in OBJECTIVES}


def equal_time(runs: dict, tok_s: dict):
    """Each run's bits at the wall time the faster objective needs for the whole budget."""
    fast = max(tok_s, key=tok_s.get)
    for objective, r in runs.items():
        tokens = r["evals"][-1]["tokens"] * min(1.0, tok_s[objective] / tok_s[fast])
        r["equal_time_tokens"] = tokens
        r["bits_equal_time"] = float(np.interp(tokens, [e["tokens"] for e in r["evals"]],
                                               [e["bits"] for e in r["evals"]]))


def decode(model, tok, prompts, cfg: SamplerConfig, seed=0):
    """(B, gen) tokens: left to right for a causal model, the diffusion sampler otherwise."""
    if model.cfg.causal:
        return ar_generate(model, prompts, tok.mask_id, tok.eot_id, cfg.gen_length, cfg.temperature, seed)
    return generate(model, prompts, tok.mask_id, tok.eot_id, cfg, seed=seed)


def quality(path, seed, args, device) -> dict:
    """Grammatical rates and infilling of one embedded-corpus model."""
    model, tok, _ = load_model(path, device)
    val_docs = load_documents(None, seed=seed)[1]  # held out from this seed's training documents
    prompts = held_out_prompts(val_docs, args.prompts)
    out = {}
    for name, temperature in (("greedy", 0.0), ("sampled", 1.0)):
        cfg = SamplerConfig(gen_length=GEN, steps=GEN, block_length=32, temperature=temperature)
        out[f"grammatical_{name}"] = sample_grammatical_rate(model, tok, prompts, cfg, seed=seed)[0]
    stories = val_docs[:args.stories]
    contexts = ["left only"] if model.cfg.causal else ["both sides", "left only"]
    out["infill"] = {f"{kind}, {context}": measure(model, tok, stories, kind, context, 64, "none")
                     for kind in TARGETS for context in contexts}
    return out


def speed(paths, args, device) -> list:
    """Tokens/s of every decoder at batch 1 and 8 (seed 0's models, GEN tokens after held-out prompts)."""
    (ar, tok, _), (diffusion, dtok, _) = load_model(paths["ar"], device), load_model(paths["diffusion"], device)
    texts = held_out_prompts(load_documents(None, seed=0)[1], 8)
    fixed = SamplerConfig(gen_length=GEN, steps=GEN, block_length=32)
    decoders = [
        ("autoregressive, K/V cache", GEN, lambda p: ar_generate(ar, p, tok.mask_id, tok.eot_id, GEN)),
        ("autoregressive, no cache", GEN, lambda p: ar_generate_uncached(ar, p, tok.mask_id, tok.eot_id, GEN)),
        ("diffusion, no cache", GEN, lambda p: generate(diffusion, p, dtok.mask_id, dtok.eot_id, fixed)),
        ("diffusion, dual cache", GEN, lambda p: generate(diffusion, p, dtok.mask_id, dtok.eot_id,
                                                          SamplerConfig(gen_length=GEN, steps=GEN, block_length=32,
                                                                        cache="dual"))),
    ]
    rows = []
    for name, steps, run in decoders:
        row = {"decoder": name, "steps": steps}
        for batch in (1, 8):
            prompts = [(tok if name.startswith("auto") else dtok).prompt(t) for t in texts[:batch]]
            run(prompts)  # warm-up
            seconds = min(timed(device, lambda: run(prompts))[1] for _ in range(args.repeats))
            row[f"tok_s_{batch}"] = batch * GEN / seconds
        rows.append(row)
        print(f"speed: {name}: {row['tok_s_1']:.0f} / {row['tok_s_8']:.0f} tok/s at batch 1 / 8",
              file=sys.stderr, flush=True)
    return rows


def mean_sd(values, spec=".3f", scale=1):
    return cell(values, spec, scale)


def tables(saved) -> str:
    m, arms = saved["meta"], saved["arms"]
    seeds = ", ".join(map(str, m["seeds"]))
    lines = [f"Same network ({m['n_layer']} layers, d 128, {m['params']:,} parameters), same recipe and budget: "
             f"{m['steps']} steps x 8 x 256 = {m['steps'] * 2048 / 1e6:.2f} M tokens per run, {m['threads']} "
             f"thread(s); mean +- sd over seeds {seeds}. Bits/token on the validation windows: "
             f"autoregressive = exact NLL, diffusion = NELBO (an upper bound on its NLL).", "",
             "| data | measure | autoregressive | diffusion |", "|---|---|---|---|",
             f"| all | training tokens/s, timed interleaved in one process | {saved['tok_s']['ar']:,.0f} | "
             f"{saved['tok_s']['diffusion']:,.0f} |"]
    per = lambda arm, obj, key: [r[obj][key] for r in arms[arm]]
    for arm, rows in arms.items():
        what = ARMS[arm][0]
        lines += [f"| {what} | val bits/token, equal tokens | {mean_sd(per(arm, 'ar', 'bits'))} | "
                  f"{mean_sd(per(arm, 'diffusion', 'bits'))} |",
                  f"| {what} | val bits/token, equal wall time | {mean_sd(per(arm, 'ar', 'bits_equal_time'))} | "
                  f"{mean_sd(per(arm, 'diffusion', 'bits_equal_time'))} |"]
        if arm == "tenth":
            best = lambda obj: [min(e["bits"] for e in r[obj]["evals"]) for r in rows]
            lines.append(f"| {what} | best val bits/token along the run | {mean_sd(best('ar'))} | "
                         f"{mean_sd(best('diffusion'))} |")
        if arm == "embedded" and saved.get("quality"):
            lines += quality_rows(what, saved["quality"])
    s = saved.get("speed")
    if s:
        base = {b: next(r for r in s if r["decoder"] == "diffusion, no cache")[f"tok_s_{b}"] for b in (1, 8)}
        lines += ["", f"Decoding {GEN} tokens after a held-out prompt (seed 0's models, {m['threads']} thread(s), "
                      f"best of {m['repeats']}; x: against diffusion without a cache at the same batch):", "",
                  "| decoder | steps | tokens/s, batch 1 | tokens/s, batch 8 |", "|---|---|---|---|"]
        for r in s:
            lines.append(f"| {r['decoder']} | {r['steps']} | {r['tok_s_1']:,.0f} ({r['tok_s_1'] / base[1]:.2f}x) | "
                         f"{r['tok_s_8']:,.0f} ({r['tok_s_8'] / base[8]:.2f}x) |")
    return "\n".join(lines)


def quality_rows(what, q) -> list:
    lines = []
    for name, label in (("greedy", "greedy"), ("sampled", "sampled (temperature 1)")):
        lines.append(f"| {what} | grammatical %, {label} | "
                     f"{mean_sd([r['ar'][f'grammatical_{name}'] for r in q], '.1f', 100)} | "
                     f"{mean_sd([r['diffusion'][f'grammatical_{name}'] for r in q], '.1f', 100)} |")
    for kind in TARGETS:
        for measure_ in ("recovered", "grammatical"):
            ar_ = [r["ar"]["infill"][f"{kind}, left only"][measure_] for r in q]
            both = [r["diffusion"]["infill"][f"{kind}, both sides"][measure_] for r in q]
            left = [r["diffusion"]["infill"][f"{kind}, left only"][measure_] for r in q]
            lines.append(f"| {what} | {kind} hole {measure_} %: AR left only; diffusion both sides "
                         f"(left only) | {mean_sd(ar_, '.1f', 100)} | {mean_sd(both, '.1f', 100)} "
                         f"({mean_sd(left, '.1f', 100)}) |")
    return lines


def plot(saved, folder) -> str:
    plt = pyplot()
    arms = saved["arms"]
    fig, axes = plt.subplots(1, len(arms), figsize=(4.2 * len(arms), 3.6), squeeze=False)
    for ax, (arm, rows) in zip(axes[0], arms.items()):
        for colour, obj in zip(("C0", "C1"), OBJECTIVES):
            for i, r in enumerate(rows):
                x = [e["tokens"] / 1e6 for e in r[obj]["evals"]]
                ax.plot(x, [e["bits"] for e in r[obj]["evals"]], color=colour, marker=".", lw=1,
                        label=OBJECTIVES[obj] if i == 0 else None)
            if arm == "tenth" and "embedded" in arms:  # the same seeds on all of the data, dashed
                for i, r in enumerate(arms["embedded"]):
                    ax.plot([e["tokens"] / 1e6 for e in r[obj]["evals"]], [e["bits"] for e in r[obj]["evals"]],
                            color=colour, ls="--", lw=0.8, alpha=0.7, label="all of the data" if i == 0 and obj == "ar" else None)
        ax.set_xlabel("training tokens (M)")
        ax.set_ylabel("validation bits/token")
        ax.set_title(ARMS[arm][0], fontsize=10)
        ax.legend(fontsize=7)
    tok_s = saved["tok_s"]
    fig.suptitle("Same network and budget: autoregressive NLL against the diffusion NELBO (one line per seed); "
                 f"training speed AR / diffusion {tok_s['ar'] / tok_s['diffusion']:.2f}", fontsize=10)
    fig.tight_layout()
    path = os.path.join(folder, "ar_vs_diffusion.png")
    save_figure(fig, path)
    plt.close(fig)
    return path


def main():
    args = build_parser().parse_args()
    if args.from_json:
        preflight(inputs={"--from-json": args.from_json})
        try:
            with open(args.from_json) as f:
                text = tables(json.load(f))
        except (OSError, ValueError, KeyError, TypeError, StopIteration, IndexError, statistics.StatisticsError):
            die(f"{args.from_json} is not a comparison written by studies.ar_compare --json")
        print(text)
        return
    arms = [a.strip() for a in args.arms.split(",")]
    if not arms or any(a not in ARMS for a in arms) or len(set(arms)) < len(arms):
        die(f"--arms must name arms from {', '.join(ARMS)}, each once; got {args.arms}")
    figure = args.plot != "none"
    preflight(outputs={"--json": args.json}, folders={"--plot": (args.plot, ["ar_vs_diffusion.png"]) if figure else None})
    if figure:
        require_plot_extra()
    device = device_or_die(args.device, args.threads)
    os.makedirs(args.runs, exist_ok=True)
    if "pydoc" in arms and not os.path.exists(pydoc_path(args)):
        text = pydoc_text()
        write_text(pydoc_path(args), lambda f: f.write(text))
    saved = {"meta": {"seeds": args.seeds, "steps": args.steps, "n_layer": args.n_layer, "threads": args.threads or
                      torch.get_num_threads(), "repeats": args.repeats, "prompts": args.prompts,
                      "stories": args.stories},
             "arms": {arm: [] for arm in arms}}
    for seed in args.seeds:  # seed by seed: an interrupted study leaves whole seeds to reuse
        for arm in arms:
            saved["arms"][arm].append(train_arm(arm, seed, args))
    saved["tok_s"] = throughput(args, device)
    print(f"training throughput, interleaved: " + ", ".join(f"{o} {v:,.0f} tok/s" for o, v in saved["tok_s"].items()),
          file=sys.stderr, flush=True)
    for rows in saved["arms"].values():
        for runs in rows:
            equal_time(runs, saved["tok_s"])
    first = saved["arms"][arms[0]][0]
    saved["meta"]["params"] = load_model(first["ar"]["path"])[0].num_params()
    if "embedded" in arms:
        saved["quality"] = []
        for seed, runs in zip(args.seeds, saved["arms"]["embedded"]):
            saved["quality"].append({obj: quality(runs[obj]["path"], seed, args, device) for obj in OBJECTIVES})
            print(f"quality: seed {seed} done", file=sys.stderr, flush=True)
        saved["speed"] = speed({obj: saved["arms"]["embedded"][0][obj]["path"] for obj in OBJECTIVES}, args, device)
    write_json(args.json, saved)
    print(f"wrote {args.json}", file=sys.stderr)
    print(tables(saved))
    if figure:
        print(f"wrote {plot(saved, args.plot)}", file=sys.stderr)


if __name__ == "__main__":
    run_main(main)
