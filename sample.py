"""Sample from a trained minidlm model with the LLaDA reverse process.

    python sample.py                                   # a story from checkpoints/tiny.pt
    python sample.py --prompt "Tom had a red ball." --show     # watch the masks fill in
    python sample.py --show --save docs/reverse_process.gif    # the same as an animated GIF, for slides
    python sample.py --prompt "Mia was sad." --prompt "A cat sat." --temperature 0.8 --seed 3
    python sample.py --cota                            # the Repeat Curse and CoTA, side by side
    python sample.py --cache feature --cota released   # dLLM-Cache + CoTA with the authors' code's constants
    python sample.py --cache dual --threshold 0.95     # Fast-dLLM: every token 95 % sure in one step
    python sample.py --prompt "Tom had a red ball." --suffix "Tom was happy again." --gen-length 24
    python sample.py --prompt "Once upon a time, <|hole:3|> had a dog. <|hole:3|> loved it." --show
    python sample.py --checkpoint runs/ar.pt --show    # an autoregressive model (train_tiny.py --objective ar)

A checkpoint trained with `--objective ar` decodes left to right with its K/V cache (`ar_main`):
one token per step, the same output and stats line; the diffusion sampler's options and holes are
refused for it.

The generated text goes to stdout (one sample per paragraph); settings, timing and the --show
animation go to stderr, so `python sample.py > out.txt` keeps only the text.
"""
from minidlm.cli import quiet_early_ctrl_c

quiet_early_ctrl_c(__name__)  # before the heavy imports: a Ctrl-C while torch loads is one line

import argparse
import sys

import torch

from minidlm.checkpoint import CheckpointError, load_model
from minidlm.autoregressive import ar_generate, ar_generate_uncached
from minidlm.cli import (SEED, ArgumentParser, die, given_options, number, pick_device, positive_int,
                         require_plot_extra, run_main, timed)
from minidlm.files import preflight
from minidlm.cache import CACHES
from minidlm.cota import CTEV_MODES, CoTAConfig
from minidlm.data import load_documents
from minidlm.evaluate import continuation_text, held_out_prompts, plateau_warning
from minidlm.holes import SYNTAX, HoleError, encode_canvas, filled_text, has_holes
from minidlm.sampler import MIN_TEMPERATURE, REMASKING, SamplerConfig, generate, infill
from minidlm.repetition import clean_response, repetition_report
from minidlm.animation import FrameRecorder, save_gif
from minidlm.show import DenoisingView, marked_text
from minidlm.sinks import SinkProbe, describe, plot


LESSON_PROMPT = "Tom had a red ball."  # the --cota lesson's prompt when none is given
LESSON_LENGTH = 64                     # its tokens per answer, as in the Repeat Curse study
LESSON_HELD_OUT = 31                   # held-out prompts decoded beside it for the ARR
PLOT_FILES = ("sink_trajectory.png", "attention_maps.png")  # what sinks.plot writes into --plot


def temperature(text: str) -> float:
    """An argparse `type`: 0 (greedy), or a number from MIN_TEMPERATURE to 1000."""
    value = number(float, 0, 1000)(text)
    if 0 < value < MIN_TEMPERATURE:
        raise argparse.ArgumentTypeError(f"expected 0 (greedy) or a temperature >= {MIN_TEMPERATURE:g}, got "
                                         f"{text} (logits / T would overflow; 0 decodes greedily)")
    return value


def build_parser():
    s, c0 = SamplerConfig(), CoTAConfig()  # the defaults live there, once
    p = ArgumentParser(description="Generate text with a masked-diffusion LM (LLaDA sampler).")
    p.add_argument("--checkpoint", default="checkpoints/tiny.pt", help="model file (default %(default)s)")
    p.add_argument("--prompt", action="append", default=None,
                   help="prompt text; repeat the flag for a batch of prompts (default: an empty prompt, "
                        f"i.e. the start of a new story). Holes to fill in anywhere: {SYNTAX}, e.g. "
                        "'Mia had <|hole:4|>. She loved it.'")
    p.add_argument("--suffix", default=None, metavar="TEXT",
                   help="fill in between: each prompt, then --gen-length tokens, then TEXT (a space "
                        "apart on either side)")
    p.add_argument("--num-samples", type=number(int, 1, 4096), default=1, help="samples per prompt")
    p.add_argument("--gen-length", type=positive_int, default=None,
                   help=f"tokens to generate after the prompt (default {s.gen_length}; {LESSON_LENGTH} "
                        f"in the --cota lesson)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="denoising steps in total (default: one per masked token)")
    p.add_argument("--block-length", type=positive_int, default=None,
                   help=f"semi-autoregressive block size, over the masked tokens in text order (default: "
                        f"{s.block_length} where it divides their number, else all of them in one block)")
    p.add_argument("--temperature", type=temperature, default=s.temperature,
                   help=f"0 = greedy (default); else from {MIN_TEMPERATURE:g} (below it logits / T overflows, "
                        f"and sampling is greedy anyway) to 1000")
    p.add_argument("--remasking", default=s.remasking, choices=REMASKING)
    p.add_argument("--threshold", type=number(float, 0, 1, lo_open=True), default=None, metavar="P",
                   help="Fast-dLLM's parallel decoding: each step commits every masked position of the "
                        "block whose confidence is >= P (and at least the most confident one), so the "
                        "steps are as many as needed, not --steps (default: off, the fixed schedule; "
                        "0.9 is Fast-dLLM's)")
    p.add_argument("--cache", default=None, choices=list(CACHES),
                   help="reuse work across steps: prefix/dual (Fast-dLLM) or feature (dLLM-Cache) "
                        "(default: none)")
    p.add_argument("--cache-kp", type=positive_int, default=s.cache_kp, help="feature cache: prompt refresh interval K_p")
    p.add_argument("--cache-kr", type=positive_int, default=s.cache_kr, help="feature cache: response refresh interval K_r")
    p.add_argument("--cache-rho", type=number(float, 0, 1), default=s.cache_rho,
                   help="feature cache: fraction of response rows refreshed on other steps")
    p.add_argument("--cache-fresh-values", action="store_true",
                   help="feature cache: on partial steps attend to every response row's fresh V "
                        "(dLLM-Cache's own LLaDA hook), not only the refreshed rows' (the default)")
    p.add_argument("--cache-stale-first", action="store_true",
                   help="feature cache (ours, not dLLM-Cache): spend the rho budget first on rows "
                        "next to tokens committed since they were last computed")
    c = p.add_argument_group("CoTA (arXiv 2601.20520), the paper's method")
    c.add_argument("--cota", nargs="?", const="paper", default=None, choices=list(COTA_PRESETS),
                   help="CoTA = CTAE + CTEV with the paper's constants (tau 5, gamma 0.5, lambda 0.75, "
                        "w 1), or 'released': those of the authors' code (tau 2, gamma 0.75, lambda "
                        "0.25, w 0). Without --cache: a side-by-side lesson (no cache, the feature "
                        "cache, + CoTA, stale-first) with repeats marked; with --cache: that cache + CoTA")
    c.add_argument("--ctae", action="store_true", help="only CTAE: distance gain on response attention")
    c.add_argument("--ctev", action="store_true", help="only CTEV: deep-layer entropy penalty on confidence")
    c.add_argument("--ctae-tau", type=number(float, 0, 1e6, lo_open=True), default=None,
                   help=f"CTAE width tau in tokens (default: the --cota preset's; paper {c0.ctae_tau:g})")
    c.add_argument("--ctae-gamma", type=number(float, 0, 1, lo_open=True), default=None,
                   help=f"CTAE floor gamma in (0, 1] (default: the preset's; paper {c0.ctae_gamma:g})")
    c.add_argument("--ctev-lambda", type=number(float, 0, 1e6), default=None,
                   help=f"CTEV strength lambda (default: the preset's; paper {c0.ctev_lambda:g})")
    c.add_argument("--ctev-window", type=number(int, 0, 65536), default=None,
                   help=f"CTEV context window w: C(i) = i-w..i+w (default: the preset's; paper {c0.ctev_window})")
    c.add_argument("--ctev-mode", default=c0.ctev_mode, choices=CTEV_MODES,
                   help="self: the paper; context: the authors' later variant (only committed "
                        "neighbours count; use with --ctev-window 5 --ctev-lambda 0.25)")
    v = p.add_argument_group("the authors' later variants (not the paper's CoTA)")
    v.add_argument("--ctar", action="store_true",
                   help="CTAR: with --cache feature, also recompute deep-layer rows whose +-w "
                        "neighbourhood gained a committed token (staleness repair); pair it with "
                        "--ctev --ctev-mode context for the authors' later CoTA")
    v.add_argument("--ctar-window", type=number(int, 0, 65536), default=c0.ctar_window, help="CTAR neighbourhood w (default %(default)s)")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default %(default)s)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model forward (none/prefix/dual): the same tokens, faster steps, "
                        "but the first call compiles for tens of seconds, so it pays only over many "
                        "samples in one process (python bench.py --compile measures it)")
    p.add_argument("--sinks", action="store_true",
                   help="probe attention sinks while sampling: print where the top sink sits at "
                        "each step and layer, and the summary (stderr)")
    p.add_argument("--plot", metavar="DIR", default=None,
                   help="with --sinks: write the sink trajectory and attention maps (plot extra)")
    p.add_argument("--show", action="store_true", help="animate the denoising on stderr")
    p.add_argument("--save", metavar="FILE.gif", default=None,
                   help="write the denoising of the first sample as an animated GIF, one frame per step "
                        "(for slides; needs Pillow, which the plot extra brings)")
    p.add_argument("--show-delay", type=number(float, 0, 60), default=0.04, help="seconds per frame with --show")
    p.add_argument("--no-kv-cache", action="store_true",
                   help="autoregressive checkpoints (train_tiny.py --objective ar): recompute every "
                        "position at every step, the plain loop the K/V cache must equal (for timing)")
    return p


def parse_args(argv=None):
    return build_parser().parse_args(argv)


COTA_PRESETS = {  # --cota NAME: the CTAE/CTEV constants
    "paper": dict(ctae_tau=CoTAConfig.ctae_tau, ctae_gamma=CoTAConfig.ctae_gamma,
                  ctev_lambda=CoTAConfig.ctev_lambda, ctev_window=CoTAConfig.ctev_window),
    "released": dict(ctae_tau=2.0, ctae_gamma=0.75, ctev_lambda=0.25, ctev_window=0),
}


def cota_config(args) -> CoTAConfig:
    """--cota (a preset), --ctae/--ctev (one half), --ctar; explicit constants override the preset."""
    preset = COTA_PRESETS[args.cota or "paper"]
    constants = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in preset.items()}
    return CoTAConfig(ctae=bool(args.cota) or args.ctae, ctev=bool(args.cota) or args.ctev,
                      ctev_mode=args.ctev_mode, ctar=args.ctar, ctar_window=args.ctar_window, **constants)


def cota_label(c: CoTAConfig) -> str:
    parts = [f"CTAE tau {c.ctae_tau} gamma {c.ctae_gamma}"] if c.ctae else []
    parts += [f"CTEV lambda {c.ctev_lambda} w {c.ctev_window}"
              + (" (context)" if c.ctev_mode == "context" else "")] if c.ctev else []
    parts += [f"CTAR w {c.ctar_window}"] if c.ctar else []
    return " + ".join(parts)


def sampler_config(args, n_masked: int) -> SamplerConfig:
    """The sampler settings for `n_masked` tokens to fill (the defaults of --steps and --block-length
    depend on it)."""
    block = args.block_length or (SamplerConfig.block_length if n_masked % SamplerConfig.block_length == 0
                                  else n_masked)
    return SamplerConfig(gen_length=n_masked, steps=args.steps or n_masked, block_length=block,
                         temperature=args.temperature, remasking=args.remasking, threshold=args.threshold,
                         cache=args.cache or "none", cache_kp=args.cache_kp, cache_kr=args.cache_kr,
                         cache_rho=args.cache_rho, cache_stale_first=args.cache_stale_first,
                         cache_fresh_values=args.cache_fresh_values, cota=cota_config(args))


def check_threshold(args):
    """--threshold against the flags it replaces, before the model loads."""
    if args.threshold is not None and args.remasking == "random":
        die("--threshold commits the positions the model is sure of; --remasking random ranks them by a "
            "coin toss, which no confidence threshold can judge: use one or the other")
    if args.threshold is not None and args.steps is not None:
        die("--threshold decides the number of steps itself (as many as the blocks need); drop --steps")


def check_combinations(args):
    """Impossible or pointless flag combinations, before any work."""
    if args.compile and args.cache == "feature":
        die("--compile covers the none, prefix and dual samplers; the feature cache runs the model "
            "layer by layer and is not compiled")
    if args.ctar and args.cache != "feature":
        print(f"note: --ctar repairs stale rows of the feature cache; --cache {args.cache or 'none'} recomputes "
              f"every row next to a new commit anyway, so CTAR changes nothing here", file=sys.stderr)
    if args.plot and not args.sinks:
        die("--plot draws the sink probe's figures: add --sinks")
    if args.plot:
        require_plot_extra()
    if args.save:
        if not args.save.lower().endswith(".gif"):
            die(f"--save writes an animated GIF: give a file name ending in .gif, not {args.save!r}")
        try:
            import PIL  # noqa: F401
        except ImportError:
            die("--save needs Pillow: pip install -e '.[plot]'")


def runner(model, args):
    return torch.compile(model, dynamic=True) if args.compile else model


def report(args, cfg, n_texts, stats, seconds, device):
    rows = sum(stats["rows_per_layer"]) / len(stats["rows_per_layer"])
    cota = f"; CoTA {cota_label(cfg.cota)}" if cfg.cota.ctae or cfg.cota.ctev or cfg.cota.ctar else ""
    threshold = f" (threshold {cfg.threshold:g})" if cfg.threshold is not None else ""
    print(f"{n_texts} x {cfg.gen_length} tokens in {stats['steps']} steps{threshold}, {seconds:.2f}s "
          f"({n_texts * cfg.gen_length / seconds:.0f} tok/s) on {device.type}, cache {cfg.cache}: "
          f"{rows:,.0f} rows per layer computed{cota}; model {args.checkpoint}", file=sys.stderr)


def observing(*hooks):
    """One on_step hook that calls each of `hooks` that is not None; None when there is none."""
    hooks = [h for h in hooks if h is not None]
    if not hooks:
        return None

    def on_step(step, x, cache):
        for hook in hooks:
            hook(step, x, cache)
    return on_step


def cota_lesson(args, model, tokenizer, meta, device):
    """`python sample.py --cota` without --cache: the Repeat Curse and what CoTA does to it, on one
    screen. The paper's protocol (one block, one token per step, greedy) decodes the same prompt
    four ways: no cache (the reference), the feature cache the paper is about, the feature cache +
    CoTA, and the feature cache with our stale-first refresh. Each text shows its repeated
    adjacent tokens marked; each stats line gives the ARR over the shown prompt and LESSON_HELD_OUT
    held-out stories' first sentences (on the embedded corpus), decoded in the same batch."""
    for flag, used in [("--suffix", args.suffix is not None), ("--sinks", args.sinks), ("--show", args.show),
                       ("holes", any(map(has_holes, args.prompt or []))), ("--num-samples", args.num_samples > 1),
                       ("--threshold", args.threshold is not None)]:
        if used:
            die(f"the --cota lesson compares four decodes of one prompt; for {flag} pick the cache "
                f"yourself, e.g. --cota --cache feature")
    shown = (args.prompt or [LESSON_PROMPT])[0]
    texts = [shown]
    if not (meta.get("args") or {}).get("data"):  # trained on the embedded corpus: add its held-out prompts
        texts += held_out_prompts(load_documents(None, seed=0)[1], LESSON_HELD_OUT)
    n = args.gen_length
    room = model.cfg.max_seq_len - n
    if room < 1:
        die(f"--gen-length {n} leaves no room for a prompt in the model's context of {model.cfg.max_seq_len} tokens")
    prompts = [tokenizer.prompt(t)[-room:] for t in texts]  # the held-out ones cut to fit, from the left
    base = dict(gen_length=n, steps=n, block_length=n, temperature=args.temperature)
    feature = dict(base, cache="feature", cache_kp=args.cache_kp, cache_kr=args.cache_kr, cache_rho=args.cache_rho)
    cota = cota_config(args)
    decodes = [("no cache: the reference", SamplerConfig(**base)),
               (f"feature cache (dLLM-Cache, K_r {args.cache_kr}, rho {args.cache_rho:g}): the setting of the paper",
                SamplerConfig(**feature)),
               (f"feature cache + CoTA, the {args.cota} constants ({cota_label(cota)})", SamplerConfig(**feature, cota=cota)),
               ("feature cache, stale-first refresh (ours): what repairs it here",
                SamplerConfig(**feature, cache_stale_first=True))]
    try:
        for _, cfg in decodes:
            cfg.validate(max(map(len, prompts)), model.cfg.max_seq_len)
    except ValueError as e:
        die(str(e))
    colour = sys.stdout.isatty()
    print(f"The Repeat Curse: a feature cache reuses each position's features for up to K_r steps, so a "
          f"token committed next to a position whose cached features still describe a [MASK] tends to be "
          f"written twice (marked {'in reverse video' if colour else '[[like this]]'}). CoTA is the paper's "
          f"fix. One block, one token per step, greedy; {n} tokens after the prompt {shown!r}.\n", flush=True)
    counts = []
    for label, cfg in decodes:
        out, seconds = timed(device, lambda: generate(model, prompts, tokenizer.mask_id, tokenizer.eot_id, cfg,
                                                      seed=args.seed))
        text, repeats = marked_text(tokenizer, out[0].tolist(), colour)
        cleaned = [clean_response(row, tokenizer.eot_id, tokenizer.is_whitespace_token) for row in out.tolist()]
        arr = repetition_report(cleaned).ARR
        counts.append(repeats)
        print(f"{label}\n  {shown}{text}\n  -> {repeats} repeated pair(s) here; ARR {arr:.1%} over "
              f"{len(prompts)} prompt(s); {len(prompts) * n / seconds:,.0f} tokens/s\n", flush=True)
    print(f"Repeated pairs in this text: {counts[0]} without a cache, {counts[1]} with the feature cache, "
          f"{counts[2]} with CoTA, {counts[3]} with stale-first. One prompt is noisy: the study (200 "
          f"held-out prompts, and 3 model seeds) finds that the paper's CoTA makes the curse worse on this "
          f"8-layer model and stale-first repairs it. Why, and the whole table: docs/repeat-curse.md "
          f"(python -m studies.repeat_study).")


def main():
    args = parse_args()
    check_threshold(args)
    lesson = args.cota is not None and args.cache is None
    args.gen_length = args.gen_length or (LESSON_LENGTH if lesson else SamplerConfig.gen_length)
    preflight(outputs={"--save": args.save}, inputs={"--checkpoint": args.checkpoint},
              folders={"--plot": (args.plot, PLOT_FILES) if args.plot else None})
    try:
        device = pick_device(args.device)
        model, tokenizer, meta = load_model(args.checkpoint, device)
    except (ValueError, CheckpointError) as e:
        die(str(e))
    warning = plateau_warning(meta)
    if warning:
        print(warning, file=sys.stderr)
    if model.cfg.causal:
        return ar_main(args, model, tokenizer, device)
    if args.no_kv_cache:
        die(f"--no-kv-cache is for autoregressive checkpoints; {args.checkpoint} is a diffusion model "
            f"(--cache picks its cache, and none is the default)")
    if lesson:
        return cota_lesson(args, model, tokenizer, meta, device)
    texts = [t for t in (args.prompt or [""]) for _ in range(args.num_samples)]
    if args.suffix is not None or any(map(has_holes, texts)):
        return infill_main(args, model, tokenizer, texts, device)
    prompts = [tokenizer.prompt(t) for t in texts]
    cfg = sampler_config(args, args.gen_length)
    try:
        cfg.validate(max(map(len, prompts)), model.cfg.max_seq_len)
    except ValueError as e:
        die(str(e))
    check_combinations(args)
    P = max(map(len, prompts))
    view = DenoisingView(tokenizer, P, args.show_delay) if args.show else None
    probe = SinkProbe(model, tokenizer, list(map(len, prompts)),
                      snapshot_steps=(1, cfg.steps // 2, cfg.steps)) if args.sinks else None
    recorder = FrameRecorder(P) if args.save else None
    stats = {}
    out, seconds = timed(device, lambda: generate(
        runner(model, args), prompts, tokenizer.mask_id, tokenizer.eot_id, cfg, seed=args.seed,
        on_step=observing(view.draw if view else None, probe, recorder), stats=stats, observe=args.sinks))
    finish(args, tokenizer, texts, out, view, recorder)
    report(args, cfg, len(texts), stats, seconds, device)
    if probe:
        print(describe(probe, P), file=sys.stderr)
        if args.plot:
            for path in plot(probe, args.plot, P):
                print(f"wrote {path}", file=sys.stderr)


def finish(args, tokenizer, texts, out, view, recorder):
    """After decoding: close the --show view, write --save's GIF, print each prompt and its answer."""
    if view:
        view.close()
    if recorder:
        print(f"wrote {save_gif(args.save, recorder.frames, tokenizer, prompt=texts[0])}", file=sys.stderr)
    for text, row in zip(texts, out):
        print(text + continuation_text(tokenizer, row))
        if len(texts) > 1:
            print()


# what an autoregressive checkpoint takes; every other option belongs to the diffusion sampler
AR_OPTIONS = {"checkpoint", "prompt", "num_samples", "gen_length", "temperature", "seed", "device", "show", "save",
              "show_delay", "no_kv_cache"}


def ar_main(args, model, tokenizer, device):
    """An autoregressive checkpoint: decode each prompt left to right, one token per step, with the
    K/V cache (autoregressive.py), or without it (--no-kv-cache). Same output and stats line."""
    texts = [t for t in (args.prompt or [""]) for _ in range(args.num_samples)]
    if args.suffix is not None or any(map(has_holes, texts)):
        die(f"{args.checkpoint} is an autoregressive model: it writes left to right and cannot use the text "
            f"after a hole (--suffix, {SYNTAX}); give the text before it as --prompt, or use a diffusion model")
    other = [flag for dest, flag in given_options(build_parser()).items() if dest not in AR_OPTIONS]
    if other:
        die(f"{other[0]} is an option of the diffusion sampler; {args.checkpoint} is an autoregressive model, "
            f"which decodes left to right, one token per step, with its K/V cache")
    check_combinations(args)  # --save's file name and Pillow
    prompts = [tokenizer.prompt(t) for t in texts]
    P, n = max(map(len, prompts)), args.gen_length
    if P + n > model.cfg.max_seq_len:
        die(f"prompt ({P} tokens) + gen length ({n}) exceeds the model's context of {model.cfg.max_seq_len} tokens")
    view = DenoisingView(tokenizer, P, args.show_delay) if args.show else None
    recorder = FrameRecorder(P) if args.save else None
    decode = ar_generate_uncached if args.no_kv_cache else ar_generate
    stats = {}
    out, seconds = timed(device, lambda: decode(
        model, prompts, tokenizer.mask_id, tokenizer.eot_id, n, args.temperature, seed=args.seed,
        on_step=observing(view.draw if view else None, recorder), stats=stats))
    finish(args, tokenizer, texts, out, view, recorder)
    rows = stats["rows_per_layer"][0]
    print(f"{len(texts)} x {n} tokens in {stats['steps']} steps, {seconds:.2f}s ({len(texts) * n / seconds:.0f} "
          f"tok/s) on {device.type}, cache {'none' if args.no_kv_cache else 'kv'}: {rows:,.0f} rows per layer "
          f"computed; autoregressive, model {args.checkpoint}", file=sys.stderr)


def infill_main(args, model, tokenizer, texts, device):
    """Fill the holes of every text (and, with --suffix, the --gen-length tokens before it). Texts
    with the same number of masked tokens run as one batch; each batch gets the same seed."""
    if args.sinks:
        die("--sinks probes continuation; drop the holes and --suffix to use it")
    if args.suffix is not None:
        texts = [f"{t.rstrip()} <|hole:{args.gen_length}|> {args.suffix.lstrip()}" for t in texts]
    try:
        canvases = [encode_canvas(tokenizer, t) for t in texts]
    except HoleError as e:
        die(str(e))
    for text, canvas in zip(texts, canvases):
        if tokenizer.mask_id not in canvas:
            die(f"{text!r} has no hole to fill: mark one with {SYNTAX}, or give --suffix")
    groups = {}
    for i, canvas in enumerate(canvases):
        groups.setdefault(canvas.count(tokenizer.mask_id), []).append(i)
    configs = {n: sampler_config(args, n) for n in groups}
    for n, members in groups.items():
        try:
            configs[n].validate(max(len(canvases[i]) for i in members) - n, model.cfg.max_seq_len)
        except ValueError as e:
            die(f"{len(members)} text(s) with {n} tokens to fill: {e}")
    check_combinations(args)
    results = [None] * len(texts)
    for n, members in groups.items():
        batch = [canvases[i] for i in members]
        start = max(map(len, batch)) - len(batch[0]) + 1  # the first text's first column, after padding
        view = DenoisingView(tokenizer, start, args.show_delay) if args.show else None
        recorder = FrameRecorder(start) if args.save and members[0] == 0 else None  # the first text's
        stats = {}
        out, seconds = timed(device, lambda: infill(
            runner(model, args), batch, tokenizer.mask_id, tokenizer.eot_id, configs[n], seed=args.seed,
            on_step=observing(view.draw if view else None, recorder), stats=stats))
        if view:
            view.close()
        if recorder:
            print(f"wrote {save_gif(args.save, recorder.frames, tokenizer)}", file=sys.stderr)
        for i, row in zip(members, out):  # a hole at the very start fills in a word with its space
            results[i] = filled_text(tokenizer, canvases[i], row)[0].lstrip(" ")
        report(args, configs[n], len(members), stats, seconds, device)
    for text in results:
        print(text)
        if len(results) > 1:
            print()


if __name__ == "__main__":
    run_main(main)
