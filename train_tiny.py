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
import shlex
import sys
import time

import torch

from minidlm.checkpoint import (CheckpointError, atomic_save, read, save_model, state_path)
from minidlm.cli import ArgumentParser, die, pick_device, positive_int
from minidlm.corpus import CorpusError
from minidlm.data import fixed_windows, load_documents, random_windows, token_stream
from minidlm.diffusion import describe_nelbo, evaluate_nelbo, nelbo_loss
from minidlm.evaluate import held_out_prompts, sample_grammatical_rate
from minidlm.model import DiffusionLM, ModelConfig
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
    s = p.add_argument_group("schedule")
    s.add_argument("--steps", type=positive_int, default=800)
    s.add_argument("--batch-size", type=positive_int, default=16)
    s.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate")
    s.add_argument("--weight-decay", type=float, default=0.1)
    s.add_argument("--warmup", type=int, default=100, help="linear warm-up steps")
    s.add_argument("--eval-interval", type=positive_int, default=250, help="validate and save every N steps")
    s.add_argument("--eval-mc", type=positive_int, default=16, help="Monte-Carlo samples per window in the final NELBO")
    s.add_argument("--curve-every", type=positive_int, default=100,
                   help="log the sink-emergence curve (minidlm/sinks.py) every N steps (default %(default)s)")
    args = p.parse_args(argv)
    if args.sink_no_rotation and not args.sink:
        p.error("--sink-no-rotation needs --sink")
    if not (args.lr > 0 and math.isfinite(args.lr)) or args.weight_decay < 0 or args.warmup < 0:
        p.error("--lr must be positive, --weight-decay and --warmup non-negative")
    return args


def learning_rate(step: int, args) -> float:
    """Linear warm-up, then cosine decay to 10 % of the peak."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def progress_line(step, total, loss, tok_per_s, elapsed):
    eta = (total - step) * elapsed / max(step, 1)
    return (f"step {step}/{total} | loss {loss:.3f} | {tok_per_s / 1000:.1f}k tok/s | "
            f"elapsed {elapsed / 60:.1f} min | ETA {eta / 60:.1f} min")


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
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, n_layer=args.n_layer, n_head=args.n_head,
                      d_model=args.d_model, max_seq_len=args.seq_len, sink=args.sink,
                      sink_rotation=not args.sink_no_rotation)
    try:
        model = DiffusionLM(cfg).to(device)
    except ValueError as e:
        die(str(e))
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95))
    batch_gen = torch.Generator().manual_seed(args.seed)          # which windows
    mask_gen = torch.Generator(device=device).manual_seed(args.seed + 1)  # which tokens are masked
    step = 0
    if state:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
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
                "curve": curve}
        save_model(args.out, model, tokenizer, meta)
        atomic_save({"args": vars(args), "step": step, "model": model.state_dict(),
                     "optimizer": opt.state_dict(), "tokenizer": tokenizer.state_dict(),
                     "batch_rng": batch_gen.get_state(), "mask_rng": mask_gen.get_state().cpu(),
                     "curve": curve},
                    state_path(args.out))

    def validate(n_mc):
        model.eval()
        nats, se = evaluate_nelbo(model, val, tokenizer.mask_id, n_mc=n_mc, seed=args.seed)
        model.train()
        return nats, se

    tokens_per_step = args.batch_size * args.seq_len
    start, start_step, tty = time.time(), step, sys.stderr.isatty()
    model.train()
    if not curve:
        log_curve()
    while step < args.steps:
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, args)
        x0 = random_windows(train_stream, args.batch_size, args.seq_len, batch_gen).to(device)
        loss = nelbo_loss(model, x0, tokenizer.mask_id, generator=mask_gen)
        if not torch.isfinite(loss):
            die(f"loss became {loss.item()} at step {step}; stopping. The last good checkpoint "
                f"({args.out}, step saved there) is intact. Try a lower --lr.", code=1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        elapsed = time.time() - start
        if tty or step % 25 == 0 or step == args.steps:
            line = progress_line(step, args.steps, loss.item(),
                                 (step - start_step) * tokens_per_step / elapsed, elapsed)
            print("\r" + line if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)
        if step % args.curve_every == 0 or step == args.steps:
            log_curve()
        if step % args.eval_interval == 0 and step < args.steps:
            nats, se = validate(n_mc=4)
            print(("\n" if tty else "") + f"step {step}: quick " + describe_nelbo(nats, se), file=sys.stderr)
            save()
    if tty:
        print(file=sys.stderr)
    nats, se = validate(n_mc=args.eval_mc)
    minutes = (time.time() - start) / 60
    metrics = {"val_nelbo_nats": nats, "val_nelbo_se": se, "val_bits_per_token": nats / math.log(2),
               "train_minutes": minutes, "tokens_seen": step * tokens_per_step}
    print(f"final {describe_nelbo(nats, se)}; {minutes:.1f} min of training", file=sys.stderr)
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
