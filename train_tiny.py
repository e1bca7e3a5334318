"""Train a tiny masked-diffusion LM on the embedded corpus (or your own text) on a laptop CPU.

    python train_tiny.py                         # the default model and recipe (2 M tokens)
    python train_tiny.py --sink                  # the same with the extra [SINK] token
    python train_tiny.py --data my.txt --out runs/mine.pt
    python train_tiny.py --minutes 3             # stop after 3 minutes of training (or --steps)
    python train_tiny.py --resume                # continue runs/tiny.pt from runs/tiny.state.pt
    torchrun --standalone --nproc_per_node=2 train_tiny.py --threads 1   # DDP (distributed.py)

The recipe (docs/training.md has the ablation): Muon on the blocks' matrices and AdamW on the rest
(optim.py), t ~ U[0.15, 0.85] with the 1/p weight, QK-norm, ReLU^2, zero-initialised residual
projections and an output bias started at the log unigram frequencies, constant learning rate then
a linear decay over the last 30 % (warm-up-stable-decay), batch 8 x 256. The training loss is
therefore NOT the NELBO (it leaves out t < 0.15 and t > 0.85); every validation number is the true
NELBO over all t (`evaluate_nelbo`), printed beside the unigram entropy of the validation text.
The forward runs under bf16 autocast where the hardware multiplies bf16 natively (CUDA, or a CPU
with AVX512-BF16 or AMX: about 1.3x the tokens/s at the same NELBO per token); float32 elsewhere
and with --no-bf16. Weights, optimizer and evaluation stay float32.

Progress goes to stderr; the model is saved atomically to --out (plus a resumable .state.pt beside
it) at every evaluation. Ctrl-C finishes the current step, saves, prints the --resume command and
exits 130. --out must not exist unless --resume or --force.
"""
import math
import os
import shlex
import sys
import time
from argparse import BooleanOptionalAction
from contextlib import nullcontext
from functools import partial

import torch

from minidlm.checkpoint import (CheckpointError, atomic_save, read, save_model, state_path)
from minidlm.cli import (SEED, ArgumentParser, GracefulStop, check_readable_file, check_writable,
                         die, number, pick_device, positive_int, run_main)
from minidlm.corpus import CorpusError
from minidlm.data import fixed_windows, load_documents, random_windows, token_stream
from minidlm.diffusion import evaluate_nelbo, train_loss
from minidlm.distributed import Ranks
from minidlm.evaluate import describe_nelbo, held_out_prompts, sample_grammatical_rate, unigram_entropy_bits
from minidlm.model import DiffusionLM, ModelConfig
from minidlm.optim import build_optimizers, lr_factor, set_lr
from minidlm.sampler import SamplerConfig
from minidlm.sink_variants import SINK_VALUES
from minidlm.sinks import training_curve_point
from minidlm.tokenizer import MIN_VOCAB, Tokenizer


def build_parser():
    p = ArgumentParser(description="Train a tiny masked-diffusion language model.")
    p.add_argument("--out", default="runs/tiny.pt", help="model checkpoint to write (default %(default)s)")
    p.add_argument("--data", default=None, help="a UTF-8 text file to train on instead of the embedded corpus")
    p.add_argument("--sink", action="store_true", help="add the extra [SINK] token (arXiv 2601.19657)")
    p.add_argument("--sink-no-rotation", action="store_true",
                   help="with --sink: score the sink's key without RoPE (an experiment, not the paper)")
    p.add_argument("--sink-value", default="learned", choices=SINK_VALUES,
                   help="with --sink: zero fixes the sink's value vectors at 0 in every layer, so "
                        "attending to it is a pure abstain (the paper's ablation; default learned)")
    p.add_argument("--seed", type=SEED, default=0, help="seed for corpus, init, batches and masks")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default %(default)s)")
    p.add_argument("--threads", type=number(int, 1, 1024), default=None, help="torch CPU threads (default: all cores)")
    p.add_argument("--bf16", action=BooleanOptionalAction, default=True,
                   help="train under bf16 autocast where the hardware multiplies bf16 natively: CUDA "
                        "with bf16, or a CPU with AVX512-BF16 or AMX (default on; float32 elsewhere)")
    p.add_argument("--resume", action="store_true", help="continue --out from its .state.pt file")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out")
    m = p.add_argument_group("model")
    m.add_argument("--n-layer", type=number(int, 1, 1024), default=8)
    m.add_argument("--n-head", type=number(int, 1, 1024), default=4)
    m.add_argument("--d-model", type=number(int, 2, 65536), default=128)
    m.add_argument("--seq-len", type=number(int, 8, 65536), default=256, help="training window = model context")
    m.add_argument("--vocab-size", type=number(int, MIN_VOCAB, 65536), default=1024, help="BPE vocabulary incl. special tokens")
    m.add_argument("--qk-norm", action=BooleanOptionalAction, default=True, help="RMS-normalise queries and keys")
    m.add_argument("--relu2", action=BooleanOptionalAction, default=True, help="ReLU^2 MLP instead of GELU")
    m.add_argument("--zero-init", action=BooleanOptionalAction, default=True,
                   help="start the residual projections at zero")
    m.add_argument("--unigram-bias", action=BooleanOptionalAction, default=True,
                   help="an output bias started at the log unigram frequencies of the training text")
    s = p.add_argument_group("schedule and objective")
    s.add_argument("--steps", type=positive_int, default=1000)
    s.add_argument("--minutes", type=number(float, 0, 10**6, lo_open=True), default=None,
                   help="time budget: the schedule runs on max(step share, time share) and training "
                        "stops when either is used up")
    s.add_argument("--batch-size", type=number(int, 1, 65536), default=8)
    s.add_argument("--optimizer", choices=["adamw", "muon"], default="muon",
                   help="muon: Muon on the blocks' matrices, AdamW on the rest (default %(default)s)")
    s.add_argument("--lr", type=number(float, 0, 1000, lo_open=True), default=6e-3, help="peak AdamW learning rate")
    s.add_argument("--muon-lr", type=number(float, 0, 1000, lo_open=True), default=0.04, help="peak Muon learning rate")
    s.add_argument("--weight-decay", type=number(float, 0, 10), default=0.1)
    s.add_argument("--warmup", type=number(int, 0, 10**9), default=0, help="linear warm-up steps")
    s.add_argument("--schedule", choices=["cosine", "wsd"], default="wsd")
    s.add_argument("--cooldown", type=number(float, 0, 1), default=0.3, help="wsd: share of the run spent decaying")
    s.add_argument("--t-min", type=number(float, 0, 1), default=0.15, help="training draws t ~ U[t-min, t-max]")
    s.add_argument("--t-max", type=number(float, 0, 1), default=0.85)
    s.add_argument("--plain-ce", action=BooleanOptionalAction, default=False,
                   help="train on masked CE without the 1/p weight")
    s.add_argument("--eval-interval", type=positive_int, default=100, help="validate and save every N steps")
    s.add_argument("--eval-mc", type=number(int, 1, 1024), default=16, help="Monte-Carlo samples per window in the final NELBO")
    s.add_argument("--curve-every", type=positive_int, default=100,
                   help="log the sink-emergence curve (minidlm/sinks.py) every N steps (default %(default)s)")
    return p


def parse_args(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    if args.sink_no_rotation and not args.sink:
        p.error("--sink-no-rotation needs --sink")
    if args.sink_value != "learned" and not args.sink:
        p.error("--sink-value needs --sink")
    if args.t_min > args.t_max:
        p.error(f"--t-min {args.t_min} is above --t-max {args.t_max}")
    if args.d_model % args.n_head or (args.d_model // args.n_head) % 2:
        p.error(f"--d-model {args.d_model} must split into --n-head {args.n_head} heads of even size "
                f"(RoPE rotates pairs of dimensions)")
    return args


# what a resumed run must share with the saved one (model shape, data, batches, optimizer state)
RESUME_MUST_MATCH = ("n_layer", "n_head", "d_model", "seq_len", "vocab_size", "sink", "sink_no_rotation",
                     "sink_value", "qk_norm", "relu2", "unigram_bias", "data", "seed", "batch_size", "optimizer")


def model_config(args, vocab_size: int) -> ModelConfig:
    return ModelConfig(vocab_size=vocab_size, n_layer=args.n_layer, n_head=args.n_head,
                       d_model=args.d_model, max_seq_len=args.seq_len, sink=args.sink,
                       sink_rotation=not args.sink_no_rotation, sink_value=args.sink_value,
                       qk_norm=args.qk_norm,
                       mlp_act="relu2" if args.relu2 else "gelu", head_bias=args.unigram_bias,
                       zero_init=args.zero_init)


def preflight_paths(args):
    """Before any work: --out may be written (tried, then cleaned up), inputs exist and are files."""
    if os.path.exists(args.out) and not (args.resume or args.force) and not os.path.isdir(args.out):
        die(f"{args.out} exists: pass --resume to continue it or --force to overwrite it")
    problem = (check_writable(args.out) or check_writable(state_path(args.out))
               or (args.data and check_readable_file(args.data, "--data file"))
               or (args.resume and check_readable_file(state_path(args.out), "training state to resume")))
    if problem:
        die(problem)


def resume_state(args) -> dict:
    """The saved training state of --out, if this run's settings match the saved run's."""
    try:
        state = read(state_path(args.out))
    except CheckpointError as e:
        die(f"cannot resume: {e}")
    saved = {"sink_value": "learned", **state.get("args", {})}  # older runs had only the learned one
    for key in RESUME_MUST_MATCH:
        if key not in saved:
            die(f"cannot resume: {state_path(args.out)} was saved by an older train_tiny.py "
                f"(it has no --{key.replace('_', '-')}); start a new run")
        if saved[key] != getattr(args, key):
            die(f"cannot resume: --{key.replace('_', '-')} {getattr(args, key)} differs from the "
                f"saved run's {saved[key]}")
    return state


def native_bf16(device) -> bool:
    """Whether this device multiplies bf16 matrices natively: there, bf16 matmuls run about 2x
    float32's (a 2-core AVX512-BF16 CPU: 420 against 190 GFLOP/s); elsewhere they are emulated and
    slower than float32 (AVX2: about 30x)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":  # torch.cpu's own (private) checks; absent in a torch without them
        has = lambda name: getattr(torch.cpu, name, lambda: False)()
        return has("_is_avx512_bf16_supported") or has("_is_amx_tile_supported")
    return False


def bf16_autocast(device):
    """bf16 autocast for the forward where the device has native bf16, else None. Parameters,
    optimizer state and the loss stay float32; evaluation runs in float32."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if native_bf16(device) else None


def train_step(model, opts, x0, mask_id, generator, args, rows=slice(None), autocast=None):
    """One optimizer step of the recipe on this process's rows of x0; returns their loss."""
    with autocast or nullcontext():
        loss = train_loss(model, x0, mask_id, generator, t_min=args.t_min, t_max=args.t_max,
                          weight_by_p=not args.plain_ce, rows=rows)
    for opt in opts:
        opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    for opt in opts:
        opt.step()
    return loss


def progress_line(step, progress, loss, tok_per_s, seconds):
    eta = seconds * (1 - progress) / max(progress, 1e-9)
    return (f"step {step} ({progress:.0%}) | loss {loss:.3f} | {tok_per_s / 1000:.1f}k tok/s | "
            f"trained {seconds / 60:.1f} min | ETA {eta / 60:.1f} min")


def main():
    args = parse_args()
    ranks = Ranks()  # one process, or one of several under torchrun (minidlm/distributed.py)
    say = partial(print, file=sys.stderr) if ranks.main else (lambda *a, **k: None)
    try:
        device = ranks.device(pick_device(args.device))
    except ValueError as e:
        die(str(e))
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.batch_size % ranks.world:
        die(f"--batch-size {args.batch_size} is the global batch: it must split evenly over "
            f"{ranks.world} processes")
    if ranks.main:
        preflight_paths(args)
    ranks.start(device)
    state = resume_state(args) if args.resume else None

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
    say(f"data: {len(train_docs)} train / {len(val_docs)} val documents, {len(train_stream):,} / "
        f"{len(val_stream):,} tokens, vocab {tokenizer.vocab_size} ({time.time() - t0:.1f}s)")

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
        say(f"resuming {args.out} at step {step}")
        if state["args"].get("bf16", True) != args.bf16:
            say("warning: this run's --bf16/--no-bf16 differs from the saved run's")
    say(f"model: {model.num_params():,} parameters, {cfg}"
        + (f"; {ranks.world} processes, {args.batch_size // ranks.world} rows each" if ranks.distributed else ""))
    trained = ranks.wrap(model)  # the model itself, or DDP around it
    autocast = bf16_autocast(device) if args.bf16 else None
    say(f"arithmetic: {'float32' if autocast is None else 'bf16 autocast'} on {device.type}")

    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)

    def resume_command():
        argv = [a for a in sys.argv if a != "--force"] + ([] if args.resume else ["--resume"])
        return "python " + " ".join(shlex.quote(a) for a in argv)
    curve = state.get("curve", []) if state else []  # sink emergence: one point per --curve-every steps
    curve_windows = val[:8]

    def log_curve():
        point = {"step": step, "tokens": step * args.batch_size * args.seq_len,
                 **training_curve_point(model, curve_windows, tokenizer.mask_id, seed=args.seed)}
        curve.append(point)
        sink = f", mass on [SINK] {point['sink_mass']:.1%}" if point["sink_mass"] is not None else ""
        say(f"step {step}: top content sink mass {point['top_mass']:.1%}, its value norm / mean "
            f"{point['top_value_ratio']:.2f}{sink}")

    def save(final_metrics=None):
        meta = {"command": command, "args": vars(args), "bf16": autocast is not None, "step": step,
                "metrics": final_metrics or {},
                "curve": curve, "evals": evals, "unigram_bits_per_token": unigram_bits, "losses": losses}
        save_model(args.out, model, tokenizer, meta)
        atomic_save({"args": vars(args), "step": step, "model": model.state_dict(),
                     "optimizer": [opt.state_dict() for opt in opts], "tokenizer": tokenizer.state_dict(),
                     "batch_rng": batch_gen.get_state(), "mask_rng": mask_gen.get_state().cpu(),
                     "curve": curve, "evals": evals, "train_seconds": train_seconds, "losses": losses},
                    state_path(args.out))

    unigram_bits = unigram_entropy_bits(val, cfg.vocab_size)
    evals = state.get("evals", []) if state else []  # quick validations along the run
    losses = state.get("losses", []) if state else []  # the training loss of every step

    def validate(n_mc):
        model.eval()
        nats, se = evaluate_nelbo(model, val, tokenizer.mask_id, n_mc=n_mc, seed=args.seed)
        model.train()
        return nats, se

    def report(label, nats, se):
        say(("\n" if tty else "") + f"{label}: model {describe_nelbo(nats, se)}; word frequencies "
            f"alone {unigram_bits:.2f} bits/token")

    def progress():
        """Share of the run done: of the steps, or of the time budget if that runs out first."""
        done = step / args.steps
        return max(done, train_seconds / (60 * args.minutes)) if args.minutes else done

    tokens_per_step = args.batch_size * args.seq_len
    train_seconds = state.get("train_seconds", 0.0) if state else 0.0  # optimizer steps only
    start_step, start_seconds, tty = step, train_seconds, sys.stderr.isatty()
    model.train()
    if not curve and ranks.main:
        log_curve()
    stopping = False  # agreed by every process, so all stop at the same step
    with GracefulStop() as stop:  # Ctrl-C: finish this step, save, and say how to resume
        while progress() < 1.0 and not stopping:
            tick = time.time()
            set_lr(opts, lr_factor(progress(), step, args.warmup, args.schedule, args.cooldown))
            x0 = random_windows(train_stream, args.batch_size, args.seq_len, batch_gen).to(device)
            loss = train_step(trained, opts, x0, tokenizer.mask_id, mask_gen, args,
                              ranks.rows(args.batch_size), autocast)
            loss_value = ranks.mean(loss).item()
            if not math.isfinite(loss_value):
                die(f"loss became {loss_value} at step {step}; stopping. The last good checkpoint "
                    f"({args.out}, step saved there) is intact. Try a lower --lr.", code=1)
            step += 1
            losses.append(loss_value)
            stopping, train_seconds = ranks.agree(float(stop.requested), train_seconds + time.time() - tick)
            done = progress() >= 1.0
            if not ranks.main:
                continue
            if tty or step % 25 == 0 or done:
                line = progress_line(step, progress(), loss_value,
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
    ranks.stop()
    if not ranks.main:
        sys.exit(130 if stopping else 0)
    if stopping:
        save()
        print(f"\ninterrupted at step {step}: saved {args.out} and {state_path(args.out)}; continue with: "
              f"{resume_command()}", file=sys.stderr)
        sys.exit(130)
    save()  # the trained weights are safe before the (minute-long) final evaluation
    if tty:
        print(file=sys.stderr)
    try:
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
                say(f"grammatical rate of greedy samples: {rate:.1%} of {n} sentences")
            else:
                print(f"no grammatical rate: --seq-len {args.seq_len} leaves no room to sample 32 tokens "
                      f"after a prompt", file=sys.stderr)
        save(metrics)
        print(f"saved {args.out}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"\ninterrupted during the final evaluation: {args.out} holds the trained model (step "
              f"{step}) without its final metrics; evaluate it with: {resume_command()}", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    run_main(main)
