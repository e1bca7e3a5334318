"""Sample from a trained minidlm model with the LLaDA reverse process.

    python sample.py                                   # a story from checkpoints/tiny.pt
    python sample.py --prompt "Tom had a red ball." --show     # watch the masks fill in
    python sample.py --prompt "Mia was sad." --prompt "A cat sat." --temperature 0.8 --seed 3
    python sample.py --cache feature --cota            # dLLM-Cache with CoTA against repetition
    python sample.py --prompt "Tom had a red ball." --suffix "Tom was happy again." --gen-length 24
    python sample.py --prompt "Once upon a time, <|hole:3|> had a dog. <|hole:3|> loved it." --show

The generated text goes to stdout (one sample per paragraph); settings, timing and the --show
animation go to stderr, so `python sample.py > out.txt` keeps only the text.
"""
import sys
import time

import torch

from minidlm.checkpoint import CheckpointError, load_model
from minidlm.cli import (SEED, ArgumentParser, die, number, pick_device, positive_int, preflight,
                         require_plot_extra, run_main)
from minidlm.cache import CACHES
from minidlm.cota import CTEV_MODES, CoTAConfig
from minidlm.evaluate import continuation_text, plateau_warning
from minidlm.holes import SYNTAX, HoleError, encode_canvas, filled_text, has_holes
from minidlm.sampler import REMASKING, SamplerConfig, generate, infill
from minidlm.show import DenoisingView
from minidlm.sinks import SinkProbe, describe, plot


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
    p.add_argument("--gen-length", type=positive_int, default=s.gen_length,
                   help="tokens to generate after the prompt (default %(default)s)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="denoising steps in total (default: one per masked token)")
    p.add_argument("--block-length", type=positive_int, default=None,
                   help=f"semi-autoregressive block size, over the masked tokens in text order (default: "
                        f"{s.block_length} where it divides their number, else all of them in one block)")
    p.add_argument("--temperature", type=number(float, 0, 1000), default=s.temperature, help="0 = greedy (default)")
    p.add_argument("--remasking", default=s.remasking, choices=REMASKING)
    p.add_argument("--cache", default=s.cache, choices=list(CACHES),
                   help="reuse work across steps: prefix/dual (Fast-dLLM) or feature (dLLM-Cache)")
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
    c.add_argument("--cota", action="store_true", help="CoTA as in the paper: CTAE + CTEV")
    c.add_argument("--ctae", action="store_true", help="only CTAE: distance gain on response attention")
    c.add_argument("--ctev", action="store_true", help="only CTEV: deep-layer entropy penalty on confidence")
    c.add_argument("--ctae-tau", type=number(float, 0, 1e6, lo_open=True), default=c0.ctae_tau, help="CTAE width tau in tokens (paper: 5)")
    c.add_argument("--ctae-gamma", type=number(float, 0, 1, lo_open=True), default=c0.ctae_gamma, help="CTAE floor gamma in (0, 1] (paper: 0.5)")
    c.add_argument("--ctev-lambda", type=number(float, 0, 1e6), default=c0.ctev_lambda, help="CTEV strength lambda (paper: 0.75)")
    c.add_argument("--ctev-window", type=number(int, 0, 65536), default=c0.ctev_window, help="CTEV context window w: C(i) = i-w..i+w")
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
                   help="torch.compile the model forward (none/prefix/dual; worth it on CUDA)")
    p.add_argument("--sinks", action="store_true",
                   help="probe attention sinks while sampling: print where the top sink sits at "
                        "each step and layer, and the summary (stderr)")
    p.add_argument("--plot", metavar="DIR", default=None,
                   help="with --sinks: write the sink trajectory and attention maps (plot extra)")
    p.add_argument("--show", action="store_true", help="animate the denoising on stderr")
    p.add_argument("--show-delay", type=number(float, 0, 60), default=0.04, help="seconds per frame with --show")
    return p


def parse_args(argv=None):
    return build_parser().parse_args(argv)


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
                         temperature=args.temperature, remasking=args.remasking, cache=args.cache,
                         cache_kp=args.cache_kp, cache_kr=args.cache_kr, cache_rho=args.cache_rho,
                         cache_stale_first=args.cache_stale_first,
                         cache_fresh_values=args.cache_fresh_values,
                         cota=CoTAConfig(ctae=args.cota or args.ctae, ctae_tau=args.ctae_tau,
                                         ctae_gamma=args.ctae_gamma, ctev=args.cota or args.ctev,
                                         ctev_lambda=args.ctev_lambda, ctev_window=args.ctev_window,
                                         ctev_mode=args.ctev_mode, ctar=args.ctar,
                                         ctar_window=args.ctar_window))


def check_combinations(args):
    """Impossible or pointless flag combinations, before any work."""
    if args.compile and args.cache == "feature":
        die("--compile covers the none, prefix and dual samplers; the feature cache runs the model "
            "layer by layer and is not compiled")
    if args.ctar and args.cache != "feature":
        print(f"note: --ctar repairs stale rows of the feature cache; --cache {args.cache} recomputes "
              f"every row next to a new commit anyway, so CTAR changes nothing here", file=sys.stderr)
    if args.plot and not args.sinks:
        die("--plot draws the sink probe's figures: add --sinks")
    if args.plot:
        require_plot_extra()


def runner(model, args):
    return torch.compile(model, dynamic=True) if args.compile else model


def report(args, cfg, n_texts, stats, seconds, device):
    rows = sum(stats["rows_per_layer"]) / len(stats["rows_per_layer"])
    cota = f"; CoTA {cota_label(cfg.cota)}" if cfg.cota.ctae or cfg.cota.ctev or cfg.cota.ctar else ""
    print(f"{n_texts} x {cfg.gen_length} tokens in {cfg.steps} steps, {seconds:.2f}s "
          f"({n_texts * cfg.gen_length / seconds:.0f} tok/s) on {device.type}, cache {cfg.cache}: "
          f"{rows:,.0f} rows per layer computed{cota}; model {args.checkpoint}", file=sys.stderr)


def timed(device, work):
    start = time.time()
    out = work()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.time() - start


def main():
    args = parse_args()
    preflight(folders=[args.plot])
    try:
        device = pick_device(args.device)
        model, tokenizer, meta = load_model(args.checkpoint, device)
    except (ValueError, CheckpointError) as e:
        die(str(e))
    warning = plateau_warning(meta)
    if warning:
        print(warning, file=sys.stderr)
    texts = [t for t in (args.prompt or [""]) for _ in range(args.num_samples)]
    if args.suffix is not None or any(map(has_holes, texts)):
        return infill_main(args, model, tokenizer, texts, device)
    prompts = [tokenizer.prompt(t) for t in texts]
    cfg = sampler_config(args, args.gen_length)
    try:
        cfg.validate(max(map(len, prompts)), model.cfg.max_seq_len, model.cfg.n_layer)
    except ValueError as e:
        die(str(e))
    check_combinations(args)
    P = max(map(len, prompts))
    view = DenoisingView(tokenizer, P, args.show_delay) if args.show else None
    probe = SinkProbe(model, tokenizer, list(map(len, prompts)),
                      snapshot_steps=(1, cfg.steps // 2, cfg.steps)) if args.sinks else None
    observers = [o for o in (view.draw if view else None, probe) if o is not None]

    def on_step(step, x, cache):
        for observer in observers:
            observer(step, x, cache)

    stats = {}
    out, seconds = timed(device, lambda: generate(
        runner(model, args), prompts, tokenizer.mask_id, tokenizer.eot_id, cfg, seed=args.seed,
        on_step=on_step if observers else None, stats=stats, observe=args.sinks))
    if view:
        view.close()
    for text, row in zip(texts, out):
        print(text + continuation_text(tokenizer, row))
        if len(texts) > 1:
            print()
    report(args, cfg, len(texts), stats, seconds, device)
    if probe:
        print(describe(probe, P), file=sys.stderr)
        if args.plot:
            for path in plot(probe, args.plot, P):
                print(f"wrote {path}", file=sys.stderr)


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
            configs[n].validate(max(len(canvases[i]) for i in members) - n, model.cfg.max_seq_len,
                                model.cfg.n_layer)
        except ValueError as e:
            die(f"{len(members)} text(s) with {n} tokens to fill: {e}")
    check_combinations(args)
    results = [None] * len(texts)
    for n, members in groups.items():
        batch = [canvases[i] for i in members]
        start = max(map(len, batch)) - len(batch[0]) + 1  # the first text's first column, after padding
        view = DenoisingView(tokenizer, start, args.show_delay) if args.show else None
        stats = {}
        out, seconds = timed(device, lambda: infill(
            runner(model, args), batch, tokenizer.mask_id, tokenizer.eot_id, configs[n], seed=args.seed,
            on_step=view.draw if view else None, stats=stats))
        if view:
            view.close()
        for i, row in zip(members, out):  # a hole at the very start fills in a word with its space
            results[i] = filled_text(tokenizer, canvases[i], row)[0].lstrip(" ")
        report(args, configs[n], len(members), stats, seconds, device)
    for text in results:
        print(text)
        if len(results) > 1:
            print()


if __name__ == "__main__":
    run_main(main)
