"""Every table and figure of the README, from the shipped checkpoints, in one command.

    python -m studies.reproduce             # 10-20 minutes on a 2-core laptop CPU -> studies/results/REPORT.md
    python -m studies.reproduce --quick     # the classroom version, a few minutes -> studies/results/quick/REPORT.md
    python -m studies.reproduce --retrain   # first retrain the shipped models with their recorded commands
    python -m studies.reproduce --seeds     # also retrain the 3-seed runs: sink comparison, Repeat Curse (~2 h)
    python -m studies.reproduce --only "Sampler benchmark"   # rerun the stages with this in their title
                                            # and replace just their sections of the existing report

Each stage is one of the repo's own commands, run as a subprocess exactly as printed in the
report, so any table can be rerun alone. Their progress goes to the terminal; their stdout (the
tables) goes into the report. Figures go to docs/ (studies/results/quick/ with --quick) when matplotlib
is installed (the plot extra). The README's tables are copied from studies/results/REPORT.md, and
tests/test_readme.py checks that every one of them is still there, so the two cannot drift.

The 3-seed tables need nine training runs that are not shipped (runs/ is not in git): their rows
are kept in studies/results/sink_seeds.json and studies/results/repeat_seeds.json, printed again by every run of
this script, and remeasured only with --seeds.
"""
from minidlm.cli import quiet_early_ctrl_c

quiet_early_ctrl_c(__name__)  # before the heavy imports: a Ctrl-C while torch loads is one line

import math
import os
import platform
import re
import shlex
import subprocess
import sys
import time

import torch

from minidlm.checkpoint import CheckpointError, atomic_save, load_model, read
from minidlm.data import fixed_windows, load_documents, token_stream
from minidlm.diffusion import evaluate_nelbo
from minidlm.evaluate import unigram_entropy_bits
from minidlm.cli import ArgumentParser, die, run_main
from minidlm.files import preflight

PY = sys.executable
SHIPPED = ["checkpoints/tiny.pt", "checkpoints/tiny-sink.pt"]
CURVE = ["--curve-every", "100"]  # the sink-emergence curve these runs are compared on
SEED_ARMS = {"baseline": ("base", CURVE), "sink": ("sink", CURVE + ["--sink"]),  # arm: (file prefix, flags)
             "zero-value": ("zsink", CURVE + ["--sink", "--sink-value", "zero"])}
SEEDS = (0, 1, 2)
REPEAT_SEEDS = "studies/results/repeat_seeds.json"
INFILL_SEEDS = "studies/results/infill_seeds.json"
SWEEP = "studies/results/repeat_sweep.json"
SWEEP_SEEDS = "studies/results/repeat_sweep_seeds.json"
FRONTIER = "studies/results/frontier.json"
COMPILED = "studies/results/bench_compile.json"
COMPILE_RUN = "python bench.py --compile --repeats 1 --threshold 0.95 --threads 1 --json " + COMPILED
AR_COMPARE = "studies/results/ar_compare.json"
# (what, saved rows, how to rerun them)
ABLATIONS = [("embedded corpus", ["studies/results/ablation.json"], "`python -m studies.ablation --rows first-round,muon,mid-t,arch,default`"),
             ("Python's documentation as prose", ["studies/results/ablation-pydoc.json"],
              "`python -m studies.ablation --data runs/pydoc.txt --rows first-round,default --steps 400 "
              "--json studies/results/ablation-pydoc.json`"),
             ("levers on top of the default, at the tokens 3 minutes give",
              ["studies/results/ablation-levers-s0.json", "studies/results/ablation-levers-s1.json"],
              "`python -m studies.ablation --rows default,fp32,plain-ce,batch-4 --steps 550 --threads 1 --seeds S "
              "--json studies/results/ablation-levers-sS.json` for S = 0 and 1, side by side")]


def stages(quick: bool, figures: bool):
    """(title, command, what it shows) for each stage of the report."""
    out = "studies/results/quick" if quick else "studies/results"
    docs = "studies/results/quick" if quick else "docs"
    plot = lambda folder: ["--plot", folder] if figures else []
    if quick:
        study = ["-m", "studies.repeat_study", "--prompts", "16", "--seeds", "0", "--flow-prompts", "8",
                 "--rows", "none,dual,feature,feature+cota,feature+ctar+ctev-context,stale-first"]
    else:
        study = ["-m", "studies.repeat_study"]
    ablations = [("The training-recipe ablation, " + what + " (saved rows; rerun: " + rerun + ")",
                  ["-m", "studies.ablation", "--from-json", *paths],
                  "Full validation NELBO, mean +- sd over 2 seeds, at equal tokens and equal wall time.")
                 for what, paths, rerun in ABLATIONS if all(map(os.path.exists, paths))]
    return [
        ("Training throughput", ["bench.py", "--train", "--json", f"{out}/bench_train.json"]
         + (["--seconds", "3"] if quick else []),
         "Training steps of the default train_tiny.py model and recipe against the measured matmul peak."),
        *ablations,
        ("Sampler benchmark", ["bench.py", "--repeats", "2", "--json", f"{out}/bench.json"]
         + (["--quick", "--batch-sizes", "8"] if quick else []),
         "Tokens/s of every cache next to the speed-up its counted work promises."),
        ("Where a cached step's time goes", ["bench.py", "--profile", "dual", "--quick", "--threads", "1"],
         "torch.profiler over one dual-cache call (a 32-token prompt + 64 tokens, one per step): the "
         "operators that take the most time per step, at batch 1 and 8."),
        *([(f"Compiling the step (saved rows; rerun: `{COMPILE_RUN}`, about 8 min)",
            ["bench.py", "--compile", "--from-json", COMPILED],
            "Eager against torch.compile(model, dynamic=True) for the none, prefix and dual samplers, fixed "
            "schedule and threshold rule, at batch 1 and 8, in one process.")]
          if os.path.exists(COMPILED) and not quick else []),
        *([("Threshold decoding: the frontier (saved rows; rerun: "
            f"`python -m studies.frontier --threads 1 --json {FRONTIER} --plot docs`, about 10 min)",
            ["-m", "studies.frontier", "--from-json", FRONTIER] + plot(docs),
            "Fast-dLLM's threshold rule against the fixed schedule, per cache, at batch 1 and 8: steps, "
            "speed and what it costs in grammar and repetition.")]
          if os.path.exists(FRONTIER) and not quick else []),
        *([("Threshold decoding: the frontier",
            ["-m", "studies.frontier", "--prompts", "8", "--speed-prompts", "2", "--thresholds", "0.7,0.9",
             "--caches", "none,dual", "--json", f"{out}/frontier.json"] + plot(docs),
            "Fast-dLLM's threshold rule against the fixed schedule, a few prompts.")] if quick else []),
        ("Where the sinks sit: the probe on the baseline",
         ["sample.py", "--sinks", "--gen-length", "64", "--steps", "64"] + plot(docs),
         "One greedy sample from an empty prompt with the sink probe on (its summary is on stderr)."),
        ("Where the sinks sit: the probe on the [SINK] model",
         ["sample.py", "--checkpoint", "checkpoints/tiny-sink.pt", "--sinks", "--gen-length", "64",
          "--steps", "64"] + plot(os.path.join(docs, "tiny-sink")),
         "The same with the extra [SINK] token."),
        ("Baseline vs [SINK]: the shipped models",
         ["-m", "studies.sink_compare", "--json", f"{out}/sink_compare.json"] + plot(docs)
         + (["--prompts", "4", "--windows", "8", "--mc", "2"] if quick else []),
         "Quality and sink behaviour of tiny.pt and tiny-sink.pt (same budget, data and seed)."),
        ("No sink, the [SINK] and the zero-value [SINK] over 3 seeds (saved rows; remeasure with --seeds)",
         ["-m", "studies.sink_compare", "--from-json", "studies/results/sink_seeds.json"] + plot(os.path.join(docs, "seeds")),
         "Nine runs of the default `python train_tiny.py --seed S [--sink [--sink-value zero]]` "
         "(1,000 x 8 x 256 tokens), three per arm; NELBO on 32 windows x 8 samples (for the sink models also "
         "with [SINK] masked at test time), the probe over 16 held-out prompts."),
        ("The Repeat Curse and CoTA", study + ["--json", f"{out}/repeat_study.json"] + plot(docs),
         "Single block, one token per step, greedy: the authors' protocol."),
        *([("The Repeat Curse over 3 model seeds (saved rows; remeasure with --seeds)",
            ["-m", "studies.repeat_study", "--from-json", REPEAT_SEEDS],
            "The headline rows of the same study on the three baseline seed runs of the default recipe "
            "(`python train_tiny.py --seed S`), the same 100 prompts (prompt seed 0) for each: mean +- sd over "
            "the models.")]
          if os.path.exists(REPEAT_SEEDS) and not quick else []),
        *([("CoTA's constants: the paper's against the authors' released code (saved rows; rerun: "
            f"`python -m studies.repeat_study --sweep --json {SWEEP}`)",
            ["-m", "studies.repeat_study", "--from-json", SWEEP],
            "The shipped model, the study's protocol and prompts (2 x 100): the paper's CoTA, the exact "
            "combination of the released code, and each half alone.")]
          if os.path.exists(SWEEP) and not quick else []),
        *([("CoTA's constants over 3 model seeds (saved rows; remeasure with --seeds)",
            ["-m", "studies.repeat_study", "--from-json", SWEEP_SEEDS],
            "The same sweep on the three baseline seed runs, 100 prompts (prompt seed 0): mean +- sd over "
            "the models.")]
          if os.path.exists(SWEEP_SEEDS) and not quick else []),
        ("Infilling against continuation", ["-m", "studies.infill_study", "--stories", "100" if quick else "200",
                                             "--json", f"{out}/infill_study.json"],
         "The main character's name (or the object) blanked out where it is introduced: filled with the "
         "later text present (both sides) and with the text cut at the hole (left only)."),
        *([("Infilling over 3 model seeds (saved rows; remeasure with --seeds)",
            ["-m", "studies.infill_study", "--from-json", INFILL_SEEDS],
            "The same study on the three baseline seed runs of the default recipe: mean +- sd over the models.")]
          if os.path.exists(INFILL_SEEDS) and not quick else []),
        *([("The autoregressive baseline against diffusion (saved rows; rerun: `python -m studies.ar_compare "
            "--threads 1`)", ["-m", "studies.ar_compare", "--from-json", AR_COMPARE],
            "The same network trained with the causal mask and the next-token loss (`train_tiny.py --objective "
            "ar`) beside the diffusion model, at one budget and over seeds (the first line says which).")]
          if os.path.exists(AR_COMPARE) and not quick else []),
    ]


def run_stage(i, n, title, command, log, what=""):
    """Run `python command...`; `what` and its stdout (plus stderr for sample.py, whose probe view
    is there) go into the log, sample.py's inside a code fence."""
    shown = "python " + " ".join(shlex.quote(a) for a in command)
    print(f"[{i}/{n}] {title}: {shown}", file=sys.stderr, flush=True)
    text_out = command[0] == "sample.py"
    t0 = time.time()
    result = subprocess.run([PY] + command, stdout=subprocess.PIPE, text=True,
                            stderr=subprocess.STDOUT if text_out else None)
    seconds = time.time() - t0
    if result.returncode != 0:
        if text_out:
            print(result.stdout, file=sys.stderr)
        die(f"stage {i} ({title}) failed with exit code {result.returncode}: {shown}", code=1)
    print(f"[{i}/{n}] done in {seconds:.0f} s", file=sys.stderr, flush=True)
    output = result.stdout.rstrip()
    if text_out:
        output = f"```\n{output}\n```"
    if "--plot" in command:  # link the figures this stage drew, relative to the report
        folder = command[command.index("--plot") + 1]
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            if name.endswith(".png") and os.path.getmtime(path) >= t0:
                output += f"\n\n![{name}]({{REPORT_DIR}}/{path})"
    log.append((title, shown, seconds, (what + "\n\n" if what else "") + output))


def retrain(paths, log):
    """Rerun each checkpoint's recorded command into runs/retrain/, then swap it in: a failed or
    interrupted retrain leaves the shipped file as it was."""
    for i, path in enumerate(paths, 1):
        try:
            command = read(path)["meta"]["command"]
        except (CheckpointError, KeyError, TypeError):
            die(f"{path} records no training command to rerun")
        argv = shlex.split(command)[1:]  # drop "python"
        if not read(path)["meta"].get("bf16") and "--no-bf16" not in argv:
            argv.append("--no-bf16")  # trained in float32 (or before bf16 on the CPU): keep it so
        if read(path)["meta"].get("curve") and "--curve-every" not in argv:
            argv += ["--curve-every", "100"]  # it logged the sink curve when that was on by default
        tmp = os.path.join("runs", "retrain", os.path.basename(path))
        argv[argv.index("--out") + 1] = tmp
        run_stage(i, len(paths), f"retrain {path}", argv + ["--force"], log)
        ckpt = read(tmp)
        ckpt["meta"]["command"] = command  # record the shipped command, not the detour via runs/
        atomic_save(ckpt, path)


def seed_runs(log):
    """Train the 3-seed comparison's runs that are missing, then measure them into sink_seeds.json."""
    jobs = [(arm, s, prefix, flags) for arm, (prefix, flags) in SEED_ARMS.items() for s in SEEDS]
    paths = {arm: [] for arm in SEED_ARMS}
    for i, (arm, s, prefix, flags) in enumerate(jobs, 1):
        path = f"runs/seeds/{prefix}-{s}.pt"
        paths[arm].append(path)
        if not os.path.exists(path):
            run_stage(i, len(jobs), f"train {arm}, seed {s}",
                      ["train_tiny.py", "--seed", str(s), "--out", path, "--force"] + flags, log)
    arms = [f"--arm={arm}={','.join(p)}" for arm, p in paths.items()]
    run_stage(1, 4, "measure the seed runs", ["-m", "studies.sink_compare", *arms, "--json", "studies/results/sink_seeds.json"], log)
    run_stage(2, 4, "the Repeat Curse over the baseline seeds",
              ["-m", "studies.repeat_study", "--checkpoint", *paths["baseline"], "--rows", "headline", "--seeds", "0",
               "--flow-prompts", "0",
               "--json", REPEAT_SEEDS], log)
    run_stage(3, 4, "infilling over the baseline seeds",
              ["-m", "studies.infill_study", "--checkpoint", *paths["baseline"], "--json", INFILL_SEEDS], log)
    run_stage(4, 4, "CoTA's constants over the baseline seeds",
              ["-m", "studies.repeat_study", "--sweep", "--checkpoint", *paths["baseline"], "--seeds", "0",
               "--flow-prompts", "0", "--json", SWEEP_SEEDS], log)


def shipped_models_table(windows_n=32, n_mc=16):
    """The shipped checkpoints: their training as recorded in them by train_tiny.py, and their
    validation NELBO measured now with today's estimator."""
    lines = ["| checkpoint | command | steps x tokens | training time | val NELBO (bits/token) | "
             "unigram entropy (bits/token) | grammatical |", "|---|---|---|---|---|---|---|"]
    for path in SHIPPED:
        try:
            model, tok, meta = load_model(path)
        except CheckpointError as e:
            die(f"{e} (restore it with git checkout, or pass --retrain)")
        m, args = meta.get("metrics", {}), meta.get("args", {})
        windows = fixed_windows(token_stream(tok, load_documents(args.get("data"))[1]), model.cfg.max_seq_len,
                                windows_n)
        nats, se = evaluate_nelbo(model, windows, tok.mask_id, n_mc=n_mc)
        gram = (f"{100 * m['grammatical_rate']:.1f} % of {m['grammatical_sentences']}"
                if "grammatical_rate" in m else "-")
        lines.append(f"| `{path}` | `{meta.get('command', '?')}` | {meta.get('step', 0):,} x "
                     f"{args.get('batch_size', 0) * args.get('seq_len', 0):,} | "
                     f"{m.get('train_minutes', float('nan')):.1f} min | "
                     f"{nats / math.log(2):.3f} +- {se / math.log(2):.3f} | "
                     f"{unigram_entropy_bits(windows, model.cfg.vocab_size):.2f} | {gram} |")
    return "\n".join(lines)


def how_run(started) -> str:
    """This run's command (quoted as typed), how long it took, and on what."""
    return (f"`python -m studies.reproduce{' ' if sys.argv[1:] else ''}{shlex.join(sys.argv[1:])}` in "
            f"{(time.time() - started) / 60:.1f} min on {platform.machine()} ({os.cpu_count()} cores), "
            f"Python {platform.python_version()}, torch {torch.__version__}, {torch.get_num_threads()} threads")


def render_sections(path, log) -> list:
    """The log as report sections, (title, text), figure links relative to the report at `path`."""
    up = os.path.relpath(".", os.path.dirname(path))  # the repo root, seen from the report
    sections = []
    for title, shown, seconds, stdout in log:
        where = f"`{shown}` ({seconds:.0f} s)" if shown.startswith("python") else shown
        sections.append((title, f"## {title}\n\n{where}\n\n{stdout.replace('{REPORT_DIR}/', up + '/')}"))
    return sections


def write_text(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)  # a Ctrl-C leaves the old report whole


def write_report(path, log, started):
    header = (f"# minidlm reproduction report\n\nWritten by {how_run(started)}. Every table below is the "
              f"stdout of the command shown above it.")
    write_text(path, "\n\n".join([header] + [text for _, text in render_sections(path, log)]) + "\n")


def build_parser():
    p = ArgumentParser(description="Run every experiment of the README and write studies/results/REPORT.md.")
    p.add_argument("--quick", action="store_true",
                   help="a classroom version in a few minutes (studies/results/quick/REPORT.md)")
    p.add_argument("--retrain", action="store_true",
                   help="first retrain the shipped checkpoints with their recorded commands (about an hour)")
    p.add_argument("--seeds", action="store_true",
                   help="retrain the nine 3-seed runs and remeasure the sink comparison, the Repeat Curse and infilling over them (about 2 hours)")
    p.add_argument("--only", nargs="+", metavar="TITLE",
                   help="rerun only the stages whose title contains one of these (case does not matter) and "
                        "replace their sections in the existing report, keeping the others")
    return p


def split_report(text):
    """A report's header and its sections: (header, [(title, whole section text)]). A section
    starts at a line beginning with "## " (the tables inside use none)."""
    header, *parts = re.split(r"(?m)^## ", text)
    return header.rstrip("\n"), [(part.split("\n", 1)[0], "## " + part.rstrip("\n")) for part in parts]


def splice_report(path, log, started, order=()):
    """--only: replace the sections of the report at `path` whose titles the log has rerun, in
    place; a stage the report did not have yet goes after the last section that comes before it
    in `order` (the stages' titles in report order), or last. Each such run adds one line to the
    header saying which sections it rerun, and how."""
    with open(path) as f:
        header, sections = split_report(f.read())
    fresh = dict(render_sections(path, log))
    note = f"Sections rerun alone by {how_run(started)}: " + "; ".join(f"'{t}'" for t in fresh) + "."
    sections = [(title, fresh.pop(title, text)) for title, text in sections]
    rank = {title: i for i, title in enumerate(order)}
    for title, text in fresh.items():  # new stages
        before = [i for i, (t, _) in enumerate(sections) if rank.get(t, -1) < rank.get(title, len(rank))]
        sections.insert(before[-1] + 1 if before else len(sections), (title, text))
    write_text(path, "\n\n".join([header, note] + [text for _, text in sections]) + "\n")


def main():
    args = build_parser().parse_args()
    out = "studies/results/quick" if args.quick else "studies/results"
    report = os.path.join(out, "REPORT.md")
    preflight(outputs=[report], folders=[out if args.quick else "docs"])
    if args.only and (args.retrain or args.seeds):
        die("--only reruns stages of an existing report: run --retrain or --seeds without it")
    if args.only and not os.path.exists(report):
        die(f"--only replaces sections of {report}, which does not exist yet: run the whole report first")
    titles = ["The shipped models"] + [title for title, _, _ in stages(args.quick, False)]
    for word in args.only or []:
        if not any(word.lower() in title.lower() for title in titles):
            die(f"no stage's title contains {word!r}: the titles are the report's ## headings "
                f"({'; '.join(title.split(' (')[0] for title in titles)})")
    for path in SHIPPED:
        if not os.path.exists(path) and not args.retrain:
            die(f"{path} is missing: restore it with git checkout, or pass --retrain")
    try:
        import matplotlib  # noqa: F401
        figures = True
    except ImportError:
        figures = False
        print("matplotlib is not installed: tables only (pip install -e '.[plot]' for the figures)",
              file=sys.stderr)
    started, log = time.time(), []
    if args.retrain:
        retrain(SHIPPED, log)
    if args.seeds:
        seed_runs(log)
    wanted = lambda title: not args.only or any(word.lower() in title.lower() for word in args.only)
    if wanted("The shipped models"):
        log.append(("The shipped models", "recorded in the checkpoints by train_tiny.py", 0.0,
                    "Their training, as each checkpoint records it (2 CPU cores), and their validation "
                    f"NELBO measured now ({8 if args.quick else 32} windows x {2 if args.quick else 16} "
                    "samples; grammatical rate: at training).\n\n"
                    + shipped_models_table(*((8, 2) if args.quick else (32, 16)))))
    plan = stages(args.quick, figures)
    plan = [stage for stage in plan if wanted(stage[0])]
    for i, (title, command, what) in enumerate(plan, 1):
        run_stage(i, len(plan), title, command, log, what)
    if args.only:
        splice_report(report, log, started, ["The shipped models"] + [t for t, _, _ in stages(args.quick, figures)])
    else:
        write_report(report, log, started)
    print(f"wrote {report} in {(time.time() - started) / 60:.1f} min", file=sys.stderr)


if __name__ == "__main__":
    run_main(main)
