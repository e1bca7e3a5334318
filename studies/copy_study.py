"""Does the model carry the hero's name across sentences? The copy probe, and its curve in training.

    python -m studies.copy_study                                   # the shipped models
    python -m studies.copy_study --arm base=runs/seeds/base-0.pt,runs/seeds/base-1.pt
    python -m studies.copy_study --arm A=a0.pt,a1.pt --arm B=b0.pt --plot docs/copying
    bash studies/copy_levers.sh LEVER                              # train a lever's runs, then this

First how often the embedded corpus makes copying pay (stories naming their hero more than once,
mentions per story, tokens from one mention to the next), for the shipped corpus and for the
--name-share variant the levers train on. Then per arm (checkpoints trained alike, one per seed;
mean +- sd) the copy probe (minidlm/copy_probe.py) on held-out stories of the shipped corpus: the
hero's name as a hole at its first mention (the name comes back only to its right) and at its
second (the introduction is to its left). Columns: recovered (greedy decoding writes the name),
prefers (the right name outscores every other name of its gender and token count, against
"chance" for a model that knows the gender only), p right and p best wrong name.
Last, when the checkpoints were trained with `train_tiny.py --copy-every N`, the copy curve:
recovery against training tokens, one line per arm (mean over seeds, each seed thin), and beside
it against training minutes (`--plot DIR` writes copy_curve.png).

--heads asks which attention head does the copy, per checkpoint: the weight each layer's heads
put, from the hole's rows, on the tokens of the name's other mention (uniform attention would put
the share of the keys those tokens are), then the probe again with the head that puts the most
there silenced (its output zeroed), and with the second most attentive head of its layer silenced
instead, as the control. `--plot DIR` then writes copy_heads.png (one map of layers x heads per checkpoint)
instead of the curve.
"""
from minidlm.cli import quiet_early_ctrl_c

quiet_early_ctrl_c(__name__)  # before the heavy imports: a Ctrl-C while torch loads is one line

import json
import math
import os
import sys

import torch

from minidlm.checkpoint import CheckpointError, load_model
from minidlm.cli import (ArgumentParser, cell, die, mean_curve, number, parse_arms, device_or_die, pyplot, require_plot_extra,
                         run_main, save_figure)
from minidlm.copy_probe import (MENTIONS, attention_on_mentions, copy_probe, head_zeroed, make_cases,
                                repeat_stats)
from minidlm.corpus import NAME_SHARE, generate_stories
from minidlm.data import load_documents
from minidlm.evaluate import seeds_problem, trained_on
from minidlm.files import numbered, preflight, write_json

DEFAULT_ARMS = {"shipped": ["checkpoints/tiny.pt"], "shipped [SINK]": ["checkpoints/tiny-sink.pt"]}
SHARES = (NAME_SHARE, 1.0)  # the shipped corpus and the lever's
PROBE = ("recovered", "prefers", "chance", "p_right", "p_rival", "margin")


def build_parser():
    p = ArgumentParser(description="The copy probe: is the hero's name recovered from its other mention?")
    p.add_argument("--arm", action="append", default=None, metavar="NAME=PATH[,PATH...]",
                   help="an arm and its checkpoints, one per seed (default: the shipped tiny.pt and tiny-sink.pt)")
    p.add_argument("--stories", type=number(int, 1, 1000), default=200,
                   help="held-out stories (those naming their hero twice are probed; default %(default)s)")
    p.add_argument("--json", default=None, help="also write the rows here")
    p.add_argument("--from-json", default=None, metavar="PATH", help="print (and plot) rows saved with --json")
    p.add_argument("--plot", default=None, metavar="DIR", help="write copy_curve.png here (plot extra)")
    p.add_argument("--per-seed", action="store_true",
                   help="print each seed's copy curve instead of the mean over an arm's seeds")
    p.add_argument("--heads", action="store_true",
                   help="also find the head that copies: its attention on the other mention, and the "
                        "probe with it silenced (--plot writes copy_heads.png instead of the curve)")
    p.add_argument("--device", default="auto")
    return p


def load_arms(args, arms, device) -> dict:
    """Every arm's models, loaded and checked before any measuring: diffusion models of the
    embedded corpus, each seed once and of one architecture."""
    loaded = {}
    for name, paths in arms.items():
        try:
            models = [load_model(path, device) for path in paths]
        except CheckpointError as e:
            die(str(e))
        for path, (model, _, meta) in zip(paths, models):
            if model.cfg.causal:
                die(f"{path} is an autoregressive model: it cannot fill a hole from both sides")
            if trained_on(meta):
                die(f"{path} was trained on {trained_on(meta)}: the copy probe needs the embedded corpus")
        problem = seeds_problem(paths, [model for model, _, _ in models])
        if problem:
            die(problem)
        loaded[name] = list(zip(paths, models))
    return loaded


def measure(args, arms):
    device = device_or_die(args.device)
    loaded = load_arms(args, arms, device)
    first_tok = next(iter(loaded.values()))[0][1][1]  # the corpus, counted in the first model's tokens
    stats = {str(share): repeat_stats(first_tok, generate_stories(5000, 0, share)) for share in SHARES}
    rows, held_out = [], {}
    for name, models in loaded.items():
        per_model = []
        for path, (model, tok, meta) in models:
            margs = meta.get("args", {})
            seed = margs.get("seed", 0)  # the stories this model's own training held out
            if seed not in held_out:
                held_out[seed] = load_documents(seed=seed)[1][:args.stories]
            probe = copy_probe(model, tok, held_out[seed])
            heads = find_copy_head(model, tok, held_out[seed]) if args.heads else None
            metrics = meta.get("metrics", {})
            per_model.append({"path": path, "probe": probe, "curve": meta.get("copy_curve", []),
                              "steps": meta.get("step"),  # an interrupted run has no final metrics
                              "tokens": metrics.get("tokens_seen") or (meta.get("step") or 0)
                              * margs.get("batch_size", 0) * margs.get("seq_len", 0) or None,
                              "minutes": metrics.get("train_minutes"), "bits": metrics.get("val_bits_per_token"),
                              "name_share": margs.get("name_share", NAME_SHARE),
                              **({"heads": heads} if heads else {})})
            print(f"measured {name}: {path}", file=sys.stderr, flush=True)
        rows.append({"arm": name, "per_model": per_model,
                     "curve": mean_curve([m["curve"] for m in per_model])})
    return {"corpus": stats, "stories": args.stories, "rows": rows, "heads": args.heads}


def find_copy_head(model, tok, stories) -> dict:
    """The attention maps of both mentions, the head that puts the most weight on the other
    mention (both mentions together), and the probe with it, then with a control head of the
    same layer (the second most attentive there), silenced."""
    maps = {}
    for mention in MENTIONS:
        weights, uniform = attention_on_mentions(model, tok, make_cases(tok, stories, mention, model.cfg.max_seq_len))
        maps[mention] = {"weights": weights.tolist(), "uniform": uniform}
    both = sum(torch.tensor(maps[m]["weights"]) for m in MENTIONS)
    layer, head = divmod(int(both.argmax()), model.cfg.n_head)
    control = max((h for h in range(model.cfg.n_head) if h != head), key=lambda h: both[layer, h].item())
    silenced = {}
    for h in (head, control):
        with head_zeroed(model, layer, h):
            silenced[str(h)] = copy_probe(model, tok, stories)
    return {"maps": maps, "layer": layer, "head": head, "control": control, "silenced": silenced}


def corpus_table(stats) -> str:
    lines = ["| corpus | stories | hero named twice or more % | mentions per story | tokens to the next mention: median / mean / max |",
             "|---|---|---|---|---|"]
    for share, s in stats.items():
        label = "shipped (--name-share 0.5)" if float(share) == NAME_SHARE else f"--name-share {share}"
        lines.append(f"| {label} | {s['stories']} | {100 * s['repeat_share']:.1f} | {s['mean_mentions']:.2f} | "
                     f"{s['gap_median']:g} / {s['gap_mean']:.1f} / {s['gap_max']} |")
    return "\n".join(lines)


def probe_table(saved) -> str:
    lines = [f"{saved['stories']} held-out stories of the shipped corpus; mean +- sd over seeds; rates and p in %",
             "| arm | seeds | tokens (M) | NELBO bits | mention | cases | recovered | prefers | chance | p right | p best wrong | margin nats |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in saved["rows"]:
        pm = row["per_model"]
        tokens = [m["tokens"] / 1e6 for m in pm if m["tokens"]]
        bits = [m["bits"] for m in pm if m["bits"] is not None]
        for mention in MENTIONS:
            cells = [cell([m["probe"][mention].get(k, math.nan) for m in pm],
                          ".1f" if k in ("recovered", "prefers", "chance") else ".2f", 1 if k == "margin" else 100)
                     for k in PROBE]
            lines.append(f"| {row['arm']} | {len(pm)} | {cell(tokens, '.1f') if tokens else '-'} | "
                         f"{cell(bits, '.3f') if bits else '-'} | {mention} | {pm[0]['probe'][mention]['cases']} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


def curve_table(rows, every_point=False) -> str:
    """Per arm, the mean curve at (at most) 8 evenly spread logged steps and its last point, or
    at every logged step."""
    fmt = lambda p, k: f"{p[k]:.2f}" if k in p else "-"  # curves rebuilt from a log lack the margin
    lines = ["| arm | step | tokens (M) | minutes | first: recovered % | later: recovered % | first: p right % | "
             "first: p best wrong % | margin nats, first / later |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        curve = row["curve"]
        pick = list(curve) if every_point else curve[::max(1, math.ceil(len(curve) / 8))]
        if curve and pick[-1] is not curve[-1]:
            pick.append(curve[-1])
        for p in pick:
            lines.append(f"| {row['arm']} | {p['step']:.0f} | {p['tokens'] / 1e6:.2f} | {p['train_seconds'] / 60:.1f} | "
                         f"{100 * p['first_recovered']:.1f} | {100 * p['later_recovered']:.1f} | "
                         f"{100 * p['first_p_right']:.2f} | {100 * p['first_p_rival']:.2f} | "
                         f"{fmt(p, 'first_margin')} / {fmt(p, 'later_margin')} |")
    return "\n".join(lines)


def plot_curves(rows, folder) -> str:
    plt = pyplot()
    from matplotlib.ticker import FuncFormatter
    os.makedirs(folder, exist_ok=True)
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    panels = [("tokens", 1e6, "first_recovered", "training tokens (millions)", "recovered % at its first mention"),
              ("tokens", 1e6, "later_recovered", "training tokens (millions)", "recovered % at a later mention"),
              ("train_seconds", 60, "first_recovered", "training minutes (1 thread, shared machine)",
               "first mention, against time"),
              ("tokens", 1e6, "first_margin", "training tokens (millions)", "margin at the first mention (nats)")]
    for i, row in enumerate(rows):
        curves = [m["curve"] for m in row["per_model"] if m["curve"]]
        for ax, (x, scale, y, _, _) in zip(axes, panels):
            unit = 1 if y.endswith("margin") else 100
            for c in curves:  # thin: each seed (a curve rebuilt from a training log has no margin)
                if y in c[0]:
                    ax.plot([p[x] / scale for p in c], [unit * p[y] for p in c], color=f"C{i}", alpha=0.45, lw=0.9)
            if row["curve"] and y in row["curve"][0]:  # thick: the mean over seeds
                ax.plot([p[x] / scale for p in row["curve"]], [unit * p[y] for p in row["curve"]], color=f"C{i}",
                        lw=2, label=f"{row['arm']} ({len(curves)} seed{'s' if len(curves) > 1 else ''})")
    for ax, (x, _, y, xlabel, title) in zip(axes, panels):
        # a log axis (linear near 0, where step 0 sits) keeps a 1,000-step run readable beside a long one
        ax.set_xscale("symlog", linthresh=0.1 if x == "tokens" else 1.0, linscale=0.5)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel(xlabel + ", log scale")
        ax.set_title(title, fontsize=10)
        if y.endswith("margin"):
            ax.axhline(0, color="grey", lw=0.8, ls=":")
        else:
            ax.axhline(50, color="grey", lw=0.8, ls=":")
            ax.set_ylim(-1, max(60, ax.get_ylim()[1]))
    axes[0].legend(fontsize=8)
    fig.suptitle("Copy curve: the hero's name as a hole, recovered from its other mention (held-out stories)",
                 fontsize=10)
    fig.tight_layout()
    path = os.path.join(folder, "copy_curve.png")
    save_figure(fig, path, dpi=120)
    plt.close(fig)
    return path


def heads_table(rows) -> str:
    """Per checkpoint and mention: the head most attentive to the other mention (the copy head in a
    model that copies; layers and heads counted from 0), its weight there against uniform
    attention's, and recovery intact, with it silenced and with the control head silenced."""
    lines = ["| arm | checkpoint | mention | most attentive head | its weight on the other mention % | uniform % | "
             "recovered % | head silenced | control silenced | margin nats: intact / head silenced |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for m in row["per_model"]:
            h = m["heads"]
            layer, head, control = h["layer"], h["head"], h["control"]
            for mention in MENTIONS:
                mp, off, ctl = m["probe"][mention], h["silenced"][str(head)][mention], h["silenced"][str(control)][mention]
                lines.append(f"| {row['arm']} | {os.path.basename(m['path'])} | {mention} | L{layer} H{head} | "
                             f"{100 * h['maps'][mention]['weights'][layer][head]:.1f} | "
                             f"{100 * h['maps'][mention]['uniform']:.1f} | {100 * mp['recovered']:.1f} | "
                             f"{100 * off['recovered']:.1f} | {100 * ctl['recovered']:.1f} (L{layer} H{control}) | "
                             f"{mp['margin']:.2f} / {off['margin']:.2f} |")
    return "\n".join(lines)


def plot_heads(rows, folder) -> str:
    """One map per checkpoint: each layer's heads' weight on the name's other mention, first mention
    as the hole; the copy head outlined."""
    plt = pyplot()
    os.makedirs(folder, exist_ok=True)
    models = [(row["arm"], m) for row in rows for m in row["per_model"]]
    fig, axes = plt.subplots(1, len(models), figsize=(2.5 * len(models) + 1.6, 4.6), squeeze=False)
    for ax, (arm, m) in zip(axes[0], models):
        h = m["heads"]
        weights = torch.tensor(h["maps"]["first"]["weights"])
        image = ax.imshow(100 * weights, vmin=0, vmax=100, cmap="Blues", aspect="auto")
        for layer, row in enumerate(weights.tolist()):
            for head, w in enumerate(row):
                ax.text(head, layer, f"{100 * w:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if w > 0.5 else "black")
        ax.add_patch(plt.Rectangle((h["head"] - 0.5, h["layer"] - 0.5), 1, 1, fill=False, lw=2, color="C3"))
        ax.set_xticks(range(weights.shape[1]))
        ax.set_yticks(range(weights.shape[0]))
        ax.set_xlabel("head")
        ax.set_title(f"{arm}: {os.path.basename(m['path'])}\nrecovered {100 * m['probe']['first']['recovered']:.0f} %,"
                     f"\n{100 * h['silenced'][str(h['head'])]['first']['recovered']:.0f} % with L{h['layer']} H{h['head']} "
                     f"silenced", fontsize=8)
    axes[0][0].set_ylabel("layer")
    fig.suptitle(f"Which head copies? The hero's name as a hole at its first mention: each head's attention\n"
                 f"on the name's other mention (uniform attention: "
                 f"{100 * models[0][1]['heads']['maps']['first']['uniform']:.1f} %; red: the most attentive head)",
                 fontsize=9)
    fig.subplots_adjust(top=0.78, wspace=0.35, right=0.86)
    fig.colorbar(image, cax=fig.add_axes([0.89, 0.11, 0.015, 0.66]), label="% of the hole's attention there")
    path = os.path.join(folder, "copy_heads.png")
    save_figure(fig, path, dpi=120)
    plt.close(fig)
    return path


def print_all(saved, plot_folder, per_seed=False):
    print("How often the corpus makes copying pay (first 5,000 training stories):")
    print(corpus_table(saved["corpus"]))
    print()
    print(probe_table(saved))
    if saved.get("heads"):
        print("\nWhich head copies (its weight: from the hole's rows, on the name's other mention; "
              "silenced: its output zeroed, then the control's, the second most attentive head of its layer, instead):")
        print(heads_table(saved["rows"]))
        if plot_folder:
            print(f"wrote {plot_heads(saved['rows'], plot_folder)}", file=sys.stderr)
        return
    rows = [r for r in saved["rows"] if r["curve"]]
    if rows:
        print(f"\nThe copy curve (train_tiny.py --copy-every; 128 held-out stories; "
              f"{'each seed' if per_seed else 'mean over seeds'}):")
        print(curve_table([{"arm": f"{r['arm']} {os.path.basename(m['path'])}", "curve": m["curve"]}
                           for r in rows for m in r["per_model"] if m["curve"]], every_point=True)
              if per_seed else curve_table(rows))
        if plot_folder:
            print(f"wrote {plot_curves(rows, plot_folder)}", file=sys.stderr)


def load_saved(path):
    try:
        with open(path) as f:
            saved = json.load(f)
        probe_table(saved)
        corpus_table(saved["corpus"])
        if saved.get("heads"):
            heads_table(saved["rows"])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        die(f"{path} is not a table written by copy_study.py --json")
    return saved


def main():
    args = build_parser().parse_args()
    if args.heads and args.from_json:
        die("--heads measures; --from-json reprints a saved run (its heads table too, if it was run with --heads)")
    arms = {} if args.from_json else parse_arms(args.arm, DEFAULT_ARMS)
    checkpoints = {label: path for name, paths in arms.items()
                   for label, path in numbered(f"--arm {name}", paths).items()}
    preflight(outputs={"--json": args.json if not args.from_json else None},
              folders={"--plot": (args.plot, ["copy_curve.png", "copy_heads.png"]) if args.plot else None},
              inputs={"--from-json": args.from_json, **checkpoints})
    if args.plot:
        require_plot_extra()
    saved = load_saved(args.from_json) if args.from_json else measure(args, arms)
    print_all(saved, args.plot, args.per_seed)
    if args.json and not args.from_json:
        write_json(args.json, saved)
        print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    run_main(main)
