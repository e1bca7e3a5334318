"""The Repeat Curse and CoTA, measured: one table, one command.

    python -m studies.repeat_study                      # shipped model, 100 held-out prompts x 2 seeds
    python -m studies.repeat_study --quick              # 32 prompts x 1 seed, a classroom version
    python -m studies.repeat_study --checkpoint runs/mine.pt --data my.txt
    python -m studies.repeat_study --checkpoint runs/seeds/base-{0,1,2}.pt --seeds 0   # over model seeds

Protocol of "Context Tokens are Anchors" (arXiv 2601.20520): a single block, one token committed
per step, greedy, low-confidence remasking. Each seed draws a different set of held-out prompts
(the first sentence of a validation story); with greedy decoding nothing else is random.
Every row decodes the same prompts; metrics come from minidlm/repetition.py (responses cut at
end-of-text, whitespace tokens dropped) and, on the embedded corpus, the grammatical rate of the
complete generated sentences. Output: a markdown table on stdout and a JSON list of rows.
Given several checkpoints (the same recipe trained with different seeds), every row runs on each
of them and a cell reads mean +- sd over the models (each model's value averaged over the prompt
seeds); `--from-json` prints a saved table again.

Then the information-flow view (minidlm/infoflow.py) for no cache, the feature cache and the
feature cache + CoTA: logit-lens entropy by layer at the step each position is committed, and the
deep-layer attention mass within +-5 positions, for repeated vs normal positions. `--plot DIR`
(plot extra) draws the entropy curves.
"""
from minidlm.cli import quiet_early_ctrl_c

quiet_early_ctrl_c(__name__)  # before the heavy imports: a Ctrl-C while torch loads is one line

import json
import os
import random
import sys

from minidlm.checkpoint import CheckpointError, load_model
from minidlm.cli import (SEED, ArgumentParser, cell, die, number, pick_device, positive_int, pyplot,
                         require_plot_extra, run_main, save_figure, timed)
from minidlm.files import numbered, preflight, write_json
from minidlm.corpus import CorpusError, grammatical_rate
from minidlm.cota import CoTAConfig
from minidlm.data import load_documents
from minidlm.evaluate import continuation_text, data_problem, held_out_prompts, seeds_problem
from minidlm.infoflow import FlowRecorder
from minidlm.repetition import adjacent_commit_share, clean_response, repetition_report
from minidlm.sampler import SamplerConfig, generate

FEATURE = dict(cache="feature", cache_kr=7, cache_rho=0.25)
CTAE = dict(ctae=True)
CTEV = dict(ctev=True)
CTEV_CONTEXT = dict(ctev=True, ctev_mode="context", ctev_window=5, ctev_lambda=0.25)
ROWS = {  # stable key: (label in the table, sampler settings, CoTA settings)
    "none": ("none", {}, {}),
    "prefix": ("prefix", dict(cache="prefix"), {}),
    "dual": ("dual", dict(cache="dual"), {}),
    "feature-kr1": ("feature K_r 1", {**FEATURE, "cache_kr": 1}, {}),
    "feature-kr3": ("feature K_r 3", {**FEATURE, "cache_kr": 3}, {}),
    "feature": ("feature K_r 7, rho 0.25", FEATURE, {}),
    "feature-rho0": ("feature rho 0", {**FEATURE, "cache_rho": 0.0}, {}),
    "feature-rho0.75": ("feature rho 0.75", {**FEATURE, "cache_rho": 0.75}, {}),
    "feature+ctae": ("feature + CTAE", FEATURE, CTAE),
    "feature+ctev": ("feature + CTEV", FEATURE, CTEV),
    "feature+cota": ("feature + CoTA (paper)", FEATURE, {**CTAE, **CTEV}),
    "feature+ctev-context": ("feature + CTEV context (authors' later)", FEATURE, CTEV_CONTEXT),
    "feature+ctar": ("feature + CTAR (authors' later)", FEATURE, dict(ctar=True)),
    "feature+ctar+ctev-context": ("feature + CTAR + CTEV context (authors' later CoTA)", FEATURE,
                                  dict(ctar=True, **CTEV_CONTEXT)),
    "feature-fresh-v": ("feature, fresh V of every row (dLLM-Cache's LLaDA hook)",
                        {**FEATURE, "cache_fresh_values": True}, {}),
    "stale-first": ("feature, stale-first refresh (ours)", {**FEATURE, "cache_stale_first": True}, {}),
    "none+cota": ("none + CoTA (paper)", {}, {**CTAE, **CTEV}),
}
PAPER_COTA = dict(ctae=True, ctev=True)  # CoTAConfig's defaults: tau 5, gamma 0.5, lambda 0.75, w 1
RELEASED_COTA = dict(ctae=True, ctae_tau=2.0, ctae_gamma=0.75, ctev=True, ctev_lambda=0.25, ctev_window=0)
SWEEP_ROWS = {  # --sweep: the paper's CoTA against the constants of the authors' released code
    "feature": ("feature K_r 7, rho 0.25", FEATURE, {}),
    "cota-paper": ("feature + CoTA, the paper's constants (tau 5, gamma 0.5, lambda 0.75, w 1)", FEATURE,
                   PAPER_COTA),
    "cota-released": ("feature + CoTA, the released code's constants (tau 2, gamma 0.75, lambda 0.25, w 0)",
                      FEATURE, RELEASED_COTA),
    "cota-released-w1": ("feature + CoTA, released constants but w 1", FEATURE, {**RELEASED_COTA, "ctev_window": 1}),
    "ctae-release": ("feature + CTAE tau 2, gamma 0.75 (released)", FEATURE,
                     dict(ctae=True, ctae_tau=2.0, ctae_gamma=0.75)),
    "ctae-strong": ("feature + CTAE tau 2, gamma 0.1 (strong)", FEATURE, dict(ctae=True, ctae_tau=2.0, ctae_gamma=0.1)),
    "ctev-release": ("feature + CTEV lambda 0.25, w 0 (released)", FEATURE,
                     dict(ctev=True, ctev_lambda=0.25, ctev_window=0)),
    "ctev-w1": ("feature + CTEV lambda 0.25, w 1", FEATURE, dict(ctev=True, ctev_lambda=0.25)),
}
HEADLINE = "none,dual,feature,feature+cota,feature+ctar+ctev-context,stale-first,none+cota"  # README's rows
COLUMNS = ["ARR", "SRR", "MRL", "seq_rep_2", "distinct_2", "length", "adj_commit", "grammatical", "tok_s"]
PERCENT = ("ARR", "SRR", "seq_rep_2", "distinct_2", "adj_commit", "grammatical")


def study_prompts(tok, val_docs, seed, n, limit):
    """The first sentences of n validation stories drawn with `seed`, as prompt ids."""
    docs = random.Random(seed).sample(val_docs, min(n, len(val_docs)))
    return [tok.prompt(t)[-limit:] for t in held_out_prompts(docs, len(docs))]


class CommitOrder:
    """on_step hook: the canvas position each row committed at each step (one per step here)."""

    def __init__(self, mask_id, gen_length):
        self.mask_id, self.gen_length, self.previous, self.orders = mask_id, gen_length, None, []

    def __call__(self, step, x, cache):
        masked = x == self.mask_id
        if self.previous is None:  # the canvas before step 1: every response slot masked
            self.previous = masked.clone()
            self.previous[:, -self.gen_length:] = True
            self.orders = [[] for _ in range(x.shape[0])]
        for order, p in zip(self.orders, (self.previous & ~masked).int().argmax(1).tolist()):
            order.append(p)
        self.previous = masked


def run_row(model, tok, prompts, gen_length, settings, cota, batch_size):
    """The responses, tokens/s, and the commit order of every response (a display hook, so the
    timing includes its small cost)."""
    cfg = SamplerConfig(gen_length=gen_length, steps=gen_length, block_length=gen_length,
                        cota=CoTAConfig(**cota), **settings)
    outputs, orders, seconds = [], [], 0.0
    device = next(model.parameters()).device
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        recorder = CommitOrder(tok.mask_id, gen_length)
        out, batch_seconds = timed(device, lambda: generate(model, batch, tok.mask_id, tok.eot_id, cfg,
                                                           on_step=recorder))
        seconds += batch_seconds
        outputs.extend(out.tolist())
        orders.extend(recorder.orders)
    return outputs, orders, len(prompts) * gen_length / seconds


def score(tok, outputs, orders, grammar: bool):
    cleaned = [clean_response(row, tok.eot_id, tok.is_whitespace_token) for row in outputs]
    metrics = {**repetition_report(cleaned).as_dict(), "adj_commit": adjacent_commit_share(orders)}
    if grammar:
        texts = [continuation_text(tok, row) for row in outputs]
        metrics["grammatical"] = grammatical_rate(texts)
    return metrics


FLOW_ROWS = [ROWS[key] for key in ("none", "feature", "feature+cota")]


def information_flow(model, tok, prompts, gen_length, batch_size):
    """Per mode, the FlowRecorder summary of repeated vs normal positions."""
    deep = CoTAConfig().deep_layers(model.cfg.n_layer)
    out = {}
    for name, settings, cota in FLOW_ROWS:
        cfg = SamplerConfig(gen_length=gen_length, steps=gen_length, block_length=gen_length,
                            cota=CoTAConfig(**cota), **settings)
        recorder = FlowRecorder(model, tok.mask_id, tok.eot_id, deep)
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start:start + batch_size]
            recorder.start(max(map(len, batch)))
            response = generate(model, batch, tok.mask_id, tok.eot_id, cfg, on_step=recorder, observe=True)
            recorder.finish(response)
        out[name] = recorder.summary()
        print(f"information flow: {name} done", file=sys.stderr, flush=True)
    return out, deep


def flow_table(flow, n_layer, deep):
    head = " | ".join(f"E_{l + 1}" for l in range(n_layer))
    lines = [f"| mode | positions | n | {head} | mass within +-5 (deep layers {deep[0] + 1}-{deep[-1] + 1}) |",
             "|---" * (n_layer + 4) + "|"]
    for mode, kinds in flow.items():
        for kind, v in kinds.items():
            ent = " | ".join(f"{e:.2f}" for e in v["entropy_by_layer"]) or " | ".join("-" * n_layer)
            lines.append(f"| {mode} | {kind} | {v['n']} | {ent} | {v['local_mass']:.2f} |")
    return "\n".join(lines)


def plot_flow(flow, path):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for (mode, kinds), colour in zip(flow.items(), ["tab:blue", "tab:red", "tab:green"]):
        for kind, style in (("normal", "-"), ("repeated", "--")):
            e = kinds[kind]["entropy_by_layer"]
            if e:
                ax.plot(range(1, len(e) + 1), e, style, color=colour, label=f"{mode}, {kind} (n={kinds[kind]['n']})")
    ax.set_xlabel("layer")
    ax.set_ylabel("logit-lens entropy / log V")
    ax.set_title("Entropy at the commit step: repeated vs normal positions")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def markdown(rows, columns):
    lines = ["| mode | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for r in rows:  # a cell: the value, or mean +- sd over models; rates in % with 2 decimals
        per_model = r.get("per_model", [r])
        cells = [cell([m[c] for m in per_model], ".2f", 100) if c in PERCENT else cell([m[c] for m in per_model], ".1f")
                 for c in columns]
        lines.append(f"| {r['mode']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def headline(meta):
    return (f"{len(meta['seeds'])} prompt seed(s) x {meta['prompts']} prompts, {meta['gen_length']} tokens, "
            f"single block, 1 token/step, greedy; rates in %; "
            + (f"model {meta['checkpoints'][0]}" if len(meta["checkpoints"]) == 1 else
               f"mean +- sd over {len(meta['checkpoints'])} models ({', '.join(meta['checkpoints'])})"))


def print_saved(path):
    """Print a table written by --json again (rows, and the run's settings under "meta")."""
    try:
        with open(path) as f:
            saved = json.load(f)
        meta, rows = saved["meta"], saved["rows"]
        columns = [c for c in COLUMNS if c in rows[0]]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        die(f"{path} is not a table written by repeat_study.py --json")
    print(headline(meta))
    print(markdown(rows, columns))


def build_parser():
    p = ArgumentParser(description="Measure the Repeat Curse of feature caches and what CoTA does to it.")
    p.add_argument("--checkpoint", nargs="+", default=["checkpoints/tiny.pt"],
                   help="one model, or several trained alike with different seeds (cells become "
                        "mean +- sd over them; the information-flow view uses the first)")
    p.add_argument("--data", default=None, help="text file the model was trained on (its validation "
                                                "split gives the prompts; grammar columns are dropped)")
    p.add_argument("--prompts", type=number(int, 1, 100000), default=100, help="held-out prompts per seed")
    p.add_argument("--seeds", type=SEED, nargs="+", default=[0, 1], help="one prompt set per seed")
    p.add_argument("--gen-length", type=positive_int, default=64)
    p.add_argument("--batch-size", type=number(int, 1, 4096), default=50)
    p.add_argument("--rows", default=None, help="comma-separated row keys, run in this order (default: all; "
                   f"keys: {', '.join(ROWS)}; with --sweep: {', '.join(SWEEP_ROWS)}; "
                   f"or headline, the README's rows: {HEADLINE})")
    p.add_argument("--json", default="studies/results/repeat_study.json", help="where to write the JSON rows")
    p.add_argument("--device", default="auto")
    p.add_argument("--flow-prompts", type=number(int, 0, 100000), default=30,
                   help="prompts for the information-flow view (0 skips it)")
    p.add_argument("--plot", default=None, metavar="DIR", help="write the information-flow figure here")
    p.add_argument("--sweep", action="store_true",
                   help="instead of the main rows: CoTA at other strengths (tau, gamma, lambda, w)")
    p.add_argument("--quick", action="store_true", help="32 prompts, seed 0 only")
    p.add_argument("--from-json", default=None, metavar="PATH", help="print a table saved with --json again")
    return p


def load_models(paths, device, data=None):
    """(model, tokenizer) per checkpoint. Each seed trains its own tokenizer, so every model gets
    the same prompt TEXTS encoded with its own; every model was trained on the text it is measured
    on (`data`), and the seeds share one architecture (evaluate.data_problem, seeds_problem)."""
    loaded = [load_model(path, device) for path in paths]
    models = [(model, tok) for model, tok, _ in loaded]
    problem = (next(filter(None, (data_problem(path, meta, data) for path, (_, _, meta) in zip(paths, loaded))), None)
               or seeds_problem(paths, [model for model, _ in models]))
    if problem:
        die(problem)
    return models


def study_row(models, prompt_sets, gen_length, settings, cota, batch_size, grammar):
    """Metrics of one row per (model, tokenizer) (each averaged over its prompt sets), and the mean.
    prompt_sets[m] holds model m's prompt sets, encoded with its tokenizer."""
    per_model = []
    for (model, tok), sets in zip(models, prompt_sets):
        per_seed = []
        for prompts in sets:
            outputs, orders, tok_s = run_row(model, tok, prompts, gen_length, settings, cota, batch_size)
            per_seed.append({**score(tok, outputs, orders, grammar), "tok_s": tok_s})
        pooled = {c: max(s[c] for s in per_seed) if c == "MRL" else sum(s[c] for s in per_seed) / len(per_seed)
                  for c in per_seed[0]}  # the longest run over all prompt sets; other columns: the mean
        per_model.append({**pooled, "per_seed": per_seed})
    mean = {c: sum(m[c] for m in per_model) / len(per_model) for c in per_model[0] if c != "per_seed"}
    return {**mean, "per_model": per_model}


def main():
    args = build_parser().parse_args()
    if args.from_json:
        preflight(inputs={"--from-json": args.from_json})
        return print_saved(args.from_json)
    if args.quick:
        args.flow_prompts = min(args.flow_prompts, 16)
    flow_json = os.path.splitext(args.json)[0] + "_infoflow.json" if args.json and args.flow_prompts > 0 else None
    preflight(outputs={"--json": args.json, "the information-flow file of --json": flow_json},
              folders={"--plot": (args.plot, ["infoflow_entropy.png"]) if args.plot else None},
              inputs={"--data": args.data, **numbered("--checkpoint", args.checkpoint)})
    if args.quick:
        args.prompts, args.seeds, args.flow_prompts = 32, [0], min(args.flow_prompts, 16)
    if args.plot:
        require_plot_extra()
    try:
        device = pick_device(args.device)
        models = load_models(args.checkpoint, device, args.data)
        _, val_docs = load_documents(args.data)
    except (ValueError, CheckpointError, CorpusError) as e:
        die(str(e))
    grammar = args.data is None
    table = SWEEP_ROWS if args.sweep else ROWS
    rows = HEADLINE if args.rows == "headline" else args.rows
    keys = list(table) if rows is None else [k.strip() for k in rows.split(",")]
    unknown = [k for k in keys if k not in table]
    if unknown:
        die(f"--rows: no row {unknown[0]!r}; the rows are {', '.join(table)}")
    columns = COLUMNS if grammar else [c for c in COLUMNS if c != "grammatical"]
    model, tok = models[0]  # the information-flow view uses the first model
    limit = model.cfg.max_seq_len - args.gen_length
    if limit < 2:
        die(f"--gen-length {args.gen_length} leaves no room for a prompt in the model's "
            f"{model.cfg.max_seq_len}-token context")
    prompt_sets = [[study_prompts(t, val_docs, seed, args.prompts, limit) for seed in args.seeds]
                   for _, t in models]
    results = []
    for key in keys:
        name, settings, cota = table[key]
        row = {"key": key, "mode": name, **study_row(models, prompt_sets, args.gen_length, settings, cota,
                                                     args.batch_size, grammar), "settings": settings, "cota": cota}
        results.append(row)
        print(f"[{len(results)}/{len(keys)}] {name}: ARR {100 * row['ARR']:.2f} % SRR "
              f"{100 * row['SRR']:.1f} % ({row['tok_s']:.0f} tok/s)", file=sys.stderr, flush=True)
    meta = {"checkpoints": args.checkpoint, "seeds": args.seeds, "prompts": args.prompts,
            "gen_length": args.gen_length}
    print(headline(meta))
    print(markdown(results, columns))
    flow = None
    if args.flow_prompts > 0:
        prompts = study_prompts(tok, val_docs, args.seeds[0], args.flow_prompts, limit)
        flow, deep = information_flow(model, tok, prompts, args.gen_length, args.batch_size)
        print(f"\nInformation flow ({len(prompts)} prompts, seed {args.seeds[0]}, model {args.checkpoint[0]}): "
              f"logit-lens entropy / log V by layer at the commit step, and the deep-layer attention mass "
              f"near each position")
        print(flow_table(flow, model.cfg.n_layer, deep))
        if args.plot:
            os.makedirs(args.plot, exist_ok=True)
            plot_flow(flow, os.path.join(args.plot, "infoflow_entropy.png"))
            print(f"wrote {os.path.join(args.plot, 'infoflow_entropy.png')}", file=sys.stderr)
    if args.json:
        write_json(args.json, {"meta": meta, "rows": results})
        print(f"wrote {args.json}", file=sys.stderr)
        if flow:
            write_json(flow_json, flow)
            print(f"wrote {flow_json}", file=sys.stderr)


if __name__ == "__main__":
    run_main(main)
