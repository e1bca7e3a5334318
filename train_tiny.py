"""Train a tiny masked-diffusion LM on the embedded corpus (or your own text) on a laptop CPU.

    python train_tiny.py                         # default model, about 10 minutes on 2 cores
    python train_tiny.py --sink                  # the same with the extra [SINK] token
    python train_tiny.py --data my.txt --out runs/mine.pt
    python train_tiny.py --resume                # continue runs/tiny.pt from runs/tiny.state.pt

The loss is the masked-diffusion NELBO (minidlm/diffusion.py). Progress goes to stderr; the model
is saved atomically to --out (plus a resumable .state.pt beside it) at every evaluation, so an
interrupted run leaves the last good checkpoint. --out must not exist unless --resume or --force.
"""
import math
import os
from argparse import BooleanOptionalAction
import shlex
import sys
import time

import torch

from minidlm.checkpoint import (CheckpointError, atomic_save, read, save_model, state_path)
from minidlm.cli import ArgumentParser, die, pick_device, positive_int
from minidlm.corpus import CorpusError
from minidlm.data import fixed_windows, load_documents, random_windows, token_stream
from minidlm.diffusion import describe_nelbo, evaluate_nelbo, train_loss, unigram_entropy_bits
from minidlm.evaluate import held_out_prompts, sample_grammatical_rate
from minidlm.model import DiffusionLM, ModelConfig
from minidlm.optim import build_optimizers, lr_factor, set_lr
from minidlm.sampler import SamplerConfig
from minidlm.sinks import training_curve_point
from minidlm.tokenizer import Tokenizer


def parse_args(argv=None):
    p = ArgumentParser(description="Train a tiny masked-diffusion language model.")
    p.add_argument("--out", default="runs/tiny.pt", help="model checkpoint to write (default %(default)s)")
    p.add_argument("--data", default=None, help="a UTF-8 text file to train on instead of the embedded corpus")
    p.add_argument("--sink", action="store_true", help="add the extra [SINK] token (arXiv 2601.19657)")
    p.add_argument("--sink-no-rotation", action="store_true",
                   help="with --sink: score the sink's key without RoPE (an experiment, not the paper)")
    p.add_argument("--seed", type=int, default=0, help="seed for corpus, init, batches and masks")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default %(default)s)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: all cores)")
    p.add_argument("--resume", action="store_true", help="continue --out from its .state.pt file")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out")
    m = p.add_argument_group("model")
    m.add_argument("--n-layer", type=positive_int, default=8)
    m.add_argument("--n-head", type=positive_int, default=4)
    m.add_argument("--d-model", type=positive_int, default=128)
    m.add_argument("--seq-len", type=positive_int, default=256, help="training window = model context")
    m.add_argument("--vocab-size", type=positive_int, default=1024, help="BPE vocabulary incl. special tokens")
    m.add_argument("--qk-norm", action=BooleanOptionalAction, default=True, help="RMS-normalise queries and keys")
    m.add_argument("--relu2", action=BooleanOptionalAction, default=True, help="ReLU^2 MLP instead of GELU")
    m.add_argument("--zero-init", action=BooleanOptionalAction, default=True,
                   help="start the residual projections at zero")
    m.add_argument("--unigram-bias", action=BooleanOptionalAction, default=True,
                   help="an output bias started at the log unigram frequencies of the training text")
    s = p.add_argument_group("schedule and objective")
    s.add_argument("--steps", type=positive_int, default=1000)
    s.add_argument("--minutes", type=float, default=None,
                   help="time budget: the schedule runs on max(step share, time share) and training "
                        "stops when either is used up")
    s.add_argument("--batch-size", type=positive_int, default=8)
    s.add_argument("--optimizer", choices=["adamw", "muon"], default="muon",
                   help="muon: Muon on the blocks' matrices, AdamW on the rest (default %(default)s)")
    s.add_argument("--lr", type=float, default=6e-3, help="peak AdamW learning rate")
    s.add_argument("--muon-lr", type=float, default=0.04, help="peak Muon learning rate")
    s.add_argument("--weight-decay", type=float, default=0.1)
    s.add_argument("--warmup", type=int, default=0, help="linear warm-up steps")
    s.add_argument("--schedule", choices=["cosine", "wsd"], default="wsd")
    s.add_argument("--cooldown", type=float, default=0.3, help="wsd: share of the run spent decaying")
    s.add_argument("--t-min", type=float, default=0.15, help="training draws t ~ U[t-min, t-max]")
    s.add_argument("--t-max", type=float, default=0.85)
    s.add_argument("--plain-ce", action=BooleanOptionalAction, default=False,
                   help="train on masked CE without the 1/p weight")
    s.add_argument("--eval-interval", type=positive_int, default=100, help="validate and save every N steps")
    s.add_argument("--eval-mc", type=positive_int, default=16, help="Monte-Carlo samples per window in the final NELBO")
    s.add_argument("--curve-every", type=positive_int, default=100,
                   help="log the sink-emergence curve (minidlm/sinks.py) every N steps (default %(default)s)")
    args = p.parse_args(argv)
    if args.sink_no_rotation and not args.sink:
        p.error("--sink-no-rotation needs --sink")
    if not (args.lr > 0 and math.isfinite(args.lr)) or args.weight_decay < 0 or args.warmup < 0:
        p.error("--lr must be positive, --weight-decay and --warmup non-negative")
    return args


def model_config(args, vocab_size: int) -> ModelConfig:
    return ModelConfig(vocab_size=vocab_size, n_layer=args.n_layer, n_head=args.n_head,
                       d_model=args.d_model, max_seq_len=args.seq_len, sink=args.sink,
                       sink_rotation=not args.sink_no_rotation, qk_norm=args.qk_norm,
                       mlp_act="relu2" if args.relu2 else "gelu", head_bias=args.unigram_bias,
                       zero_init=args.zero_init)


def progress_line(step, progress, loss, tok_per_s, seconds):
    eta = seconds * (1 - progress) / max(progress, 1e-9)
    return (f"step {step} ({progress:.0%}) | loss {loss:.3f} | {tok_per_s / 1000:.1f}k tok/s | "
            f"trained {seconds / 60:.1f} min | ETA {eta / 60:.1f} min")


def main():
    args = parse_args()
    try:
        device = pick_device(args.device)
    except ValueError as e:
        die(str(e))
    if args.threads:
        torch.set_num_threads(args.threads)
    if os.path.exists(args.out) and not (args.resume or args.force):
        die(f"{args.out} exists: pass --resume to continue it or --force to overwrite it")

    state = None
    if args.resume:
        try:
            state = read(state_path(args.out))
        except CheckpointError as e:
            die(f"cannot resume: {e}")
        saved = {"sink_no_rotation": False, **state["args"]}  # runs saved before the option existed
        for key in ("n_layer", "n_head", "d_model", "seq_len", "vocab_size", "sink", "sink_no_rotation",
                    "data", "seed", "batch_size"):
            if saved[key] != getattr(args, key):
                die(f"cannot resume: --{key.replace('_', '-')} {getattr(args, key)} differs from the "
                    f"saved run's {saved[key]}")

    t0 = time.time()
    try:
        train_docs, val_docs = load_documents(args.data, seed=args.seed)
    except CorpusError as e:
        die(str(e))
    tokenizer = (Tokenizer.from_state_dict(state["tokenizer"]) if state
                 else Tokenizer.train(train_docs, vocab_size=args.vocab_size))
    train_stream = token_stream(tokenizer, train_docs)
    val_stream = token_stream(tokenizer, val_docs)
    if len(train_stream) < 2 * args.seq_len:
        die(f"training text has only {len(train_stream)} tokens; need at least {2 * args.seq_len} "
            f"for --seq-len {args.seq_len}")
    val = fixed_windows(val_stream, min(args.seq_len, len(val_stream)), 32).to(device)
    print(f"data: {len(train_docs)} train / {len(val_docs)} val documents, {len(train_stream):,} / "
          f"{len(val_stream):,} tokens, vocab {tokenizer.vocab_size} ({time.time() - t0:.1f}s)",
          file=sys.stderr)

    torch.manual_seed(args.seed)
    cfg = model_config(args, tokenizer.vocab_size)
    try:
        model = DiffusionLM(cfg).to(device)
    except ValueError as e:
        die(str(e))
    if args.unigram_bias:  # start at the word-frequency solution instead of learning it first
        counts = torch.bincount(train_stream, minlength=cfg.vocab_size).float() + 1.0
        with torch.no_grad():
            model.head.bias.copy_((counts / counts.sum()).log())
    opts = build_optimizers(model, args.optimizer, args.lr, args.muon_lr, args.weight_decay)
    batch_gen = torch.Generator().manual_seed(args.seed)          # which windows
    mask_gen = torch.Generator(device=device).manual_seed(args.seed + 1)  # which tokens are masked
    step = 0
    if state:
        model.load_state_dict(state["model"])
        for opt, saved_opt in zip(opts, state["optimizer"]):
            opt.load_state_dict(saved_opt)
        batch_gen.set_state(state["batch_rng"])
        mask_gen.set_state(state["mask_rng"].to(mask_gen.get_state().device))
        step = state["step"]
        print(f"resuming {args.out} at step {step}", file=sys.stderr)
    print(f"model: {model.num_params():,} parameters, {cfg}", file=sys.stderr)

    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    curve = state.get("curve", []) if state else []  # sink emergence: one point per --curve-every steps
    curve_windows = val[:8]

    def log_curve():
        point = {"step": step, "tokens": step * args.batch_size * args.seq_len,
                 **training_curve_point(model, curve_windows, tokenizer.mask_id, seed=args.seed)}
        curve.append(point)
        sink = f", mass on [SINK] {point['sink_mass']:.1%}" if point["sink_mass"] is not None else ""
        print(f"step {step}: top content sink mass {point['top_mass']:.1%}, its value norm / mean "
              f"{point['top_value_ratio']:.2f}{sink}", file=sys.stderr)

    def save(final_metrics=None):
        meta = {"command": command, "args": vars(args), "step": step, "metrics": final_metrics or {},
                "curve": curve, "evals": evals, "unigram_bits_per_token": unigram_bits}
        save_model(args.out, model, tokenizer, meta)
        atomic_save({"args": vars(args), "step": step, "model": model.state_dict(),
                     "optimizer": [opt.state_dict() for opt in opts], "tokenizer": tokenizer.state_dict(),
                     "batch_rng": batch_gen.get_state(), "mask_rng": mask_gen.get_state().cpu(),
                     "curve": curve, "evals": evals, "train_seconds": train_seconds},
                    state_path(args.out))

    unigram_bits = unigram_entropy_bits(val, cfg.vocab_size)
    evals = state.get("evals", []) if state else []  # quick validations along the run

    def validate(n_mc):
        model.eval()
        nats, se = evaluate_nelbo(model, val, tokenizer.mask_id, n_mc=n_mc, seed=args.seed)
        model.train()
        return nats, se

    def report(label, nats, se):
        print(("\n" if tty else "") + f"{label}: model {describe_nelbo(nats, se)}; word frequencies "
              f"alone {unigram_bits:.2f} bits/token", file=sys.stderr)

    def progress():
        """Share of the run done: of the steps, or of the time budget if that runs out first."""
        done = step / args.steps
        return max(done, train_seconds / (60 * args.minutes)) if args.minutes else done

    tokens_per_step = args.batch_size * args.seq_len
    train_seconds = state.get("train_seconds", 0.0) if state else 0.0  # optimizer steps only
    start_step, start_seconds, tty = step, train_seconds, sys.stderr.isatty()
    model.train()
    if not curve:
        log_curve()
    while progress() < 1.0:
        tick = time.time()
        set_lr(opts, lr_factor(progress(), step, args.warmup, args.schedule, args.cooldown))
        x0 = random_windows(train_stream, args.batch_size, args.seq_len, batch_gen).to(device)
        loss = train_loss(model, x0, tokenizer.mask_id, mask_gen, t_min=args.t_min, t_max=args.t_max,
                          weight_by_p=not args.plain_ce)
        if not torch.isfinite(loss):
            die(f"loss became {loss.item()} at step {step}; stopping. The last good checkpoint "
                f"({args.out}, step saved there) is intact. Try a lower --lr.", code=1)
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for opt in opts:
            opt.step()
        step += 1
        train_seconds += time.time() - tick
        done = progress() >= 1.0
        if tty or step % 25 == 0 or done:
            line = progress_line(step, progress(), loss.item(),
                                 (step - start_step) * tokens_per_step / (train_seconds - start_seconds),
                                 train_seconds)
            print("\r" + line if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)
        if step % args.curve_every == 0 or done:
            log_curve()
        if step % args.eval_interval == 0 and not done:
            nats, se = validate(n_mc=4)
            evals.append({"step": step, "tokens": step * tokens_per_step, "train_seconds": train_seconds,
                          "bits": nats / math.log(2)})
            report(f"step {step}: quick", nats, se)
            save()
    if tty:
        print(file=sys.stderr)
    nats, se = validate(n_mc=args.eval_mc)
    minutes = train_seconds / 60
    metrics = {"val_nelbo_nats": nats, "val_nelbo_se": se, "val_bits_per_token": nats / math.log(2),
               "unigram_bits_per_token": unigram_bits, "train_minutes": minutes,
               "tokens_seen": step * tokens_per_step}
    evals.append({"step": step, "tokens": step * tokens_per_step, "train_seconds": train_seconds,
                  "bits": nats / math.log(2)})
    report(f"final ({minutes:.1f} min of training, {step} steps)", nats, se)
    if args.data is None:  # the embedded corpus has a grammar to score samples against
        model.eval()
        prompts = held_out_prompts(val_docs, 32)
        room = args.seq_len - 1 - max(len(tokenizer.encode(t)) for t in prompts)
        gen = min(64, room // 32 * 32)  # whole 32-token blocks that fit beside the longest prompt
        if gen > 0:
            rate, n, _ = sample_grammatical_rate(model, tokenizer, prompts,
                                                 SamplerConfig(gen_length=gen, steps=gen, block_length=32))
            metrics.update(grammatical_rate=rate, grammatical_sentences=n)
            print(f"grammatical rate of greedy samples: {rate:.1%} of {n} sentences", file=sys.stderr)
        else:
            print(f"no grammatical rate: --seq-len {args.seq_len} leaves no room to sample 32 tokens "
                  f"after a prompt", file=sys.stderr)
    save(metrics)
    print(f"saved {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
