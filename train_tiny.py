"""Train a tiny masked-diffusion LM on the embedded corpus (or your own text) on a laptop CPU.

    python train_tiny.py                         # the default model and recipe (2 M tokens)
    python train_tiny.py --sink                  # the same with the extra [SINK] token
    python train_tiny.py --data my.txt --out runs/mine.pt
    python train_tiny.py --minutes 3             # stop after 3 minutes of training (or --steps)
    python train_tiny.py --resume                # continue runs/tiny.pt from runs/tiny.state.pt
    python train_tiny.py --objective ar --out runs/ar.pt   # the same network trained left to right
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

`--objective ar` trains the autoregressive baseline: the same network, tokenizer, data, optimizer
and schedule, with a causal mask and the next-token loss (diffusion.ar_loss); its validation number
is the exact NLL (`evaluate_nll`), not a bound. The diffusion-only options (--t-min, --t-max,
--plain-ce, the sink's, --eval-mc, --curve-every) are refused with it. docs/ar-vs-diffusion.md.

Progress goes to stderr; the model is saved atomically to --out (plus a resumable .state.pt beside
it) at every evaluation. Ctrl-C finishes the current step, saves, prints the --resume command and
exits 130. --out (and its .state.pt) must not exist unless --resume or --force; neither may be the
--data file, however spelled. Two --out names can share one state file (runs/a.pt and runs/a.pth:
runs/a.state.pt); a state file that records another --out which still exists is never replaced,
not even with --force. `--curve-every N` also logs the attention-sink emergence curve (the sink
study's instrumentation) every N steps; `--copy-every N` the copy curve (copy_probe.py: is the hero's
name recovered from its other mention?).

Reading order: `main` sets up, `Run.train` is the loop (`train_step` in minidlm/train.py is one
step), `Run.finish` evaluates and saves.
"""
from minidlm.cli import quiet_early_ctrl_c

quiet_early_ctrl_c(__name__)  # before the heavy imports: a Ctrl-C while torch loads is one line

import math
import os
import shlex
import sys
import time
from argparse import BooleanOptionalAction
from functools import partial

import torch

from minidlm.checkpoint import CheckpointError, atomic_save, read, save_model, state_path
from minidlm.cli import (SEED, ArgumentParser, GracefulStop, die, given_options, number, device_or_die,
                         positive_int, run_main)
from minidlm.files import check_readable_file, preflight, same_file
from minidlm.copy_probe import make_cases, training_curve_point as copy_curve_point
from minidlm.corpus import NAME_SHARE, CorpusError
from minidlm.data import fixed_windows, load_documents, random_windows, token_stream
from minidlm.diffusion import evaluate_nelbo, evaluate_nll
from minidlm.distributed import Ranks
from minidlm.evaluate import (describe_nelbo, describe_nll, held_out_prompts, sample_grammatical_rate,
                              unigram_entropy_bits)
from minidlm.model import DiffusionLM, ModelConfig
from minidlm.optim import build_optimizers, lr_factor, set_lr
from minidlm.sampler import SamplerConfig
from minidlm.sink_variants import SINK_VALUES
from minidlm.sinks import training_curve_point
from minidlm.tokenizer import MIN_VOCAB, Tokenizer
from minidlm.train import TrainConfig, bf16_autocast, train_step


def build_parser():
    M, T = ModelConfig(), TrainConfig()  # the defaults live there, once
    p = ArgumentParser(description="Train a tiny masked-diffusion language model.")
    p.add_argument("--out", default="runs/tiny.pt", help="model checkpoint to write (default %(default)s)")
    p.add_argument("--data", default=None, help="a UTF-8 text file to train on instead of the embedded corpus")
    p.add_argument("--objective", choices=OBJECTIVES, default=T.objective,
                   help="diffusion: the masked-diffusion model (default); ar: the same network with a "
                        "causal mask and the next-token loss, the autoregressive baseline")
    p.add_argument("--train-fraction", type=number(float, 0, 1, lo_open=True), default=1.0,
                   help="train on this share of the training documents only (the first ones), so a "
                        "run sees them more often; validation is unchanged (default 1)")
    p.add_argument("--sink", action="store_true", help="add the extra [SINK] token (arXiv 2601.19657)")
    p.add_argument("--sink-no-rotation", action="store_true",
                   help="with --sink: score the sink's key without RoPE (an experiment, not the paper)")
    p.add_argument("--sink-value", default="learned", choices=SINK_VALUES,
                   help="with --sink: zero fixes the sink's value vectors at 0 in every layer, so "
                        "attending to it is a pure abstain (the paper's ablation; default learned)")
    p.add_argument("--name-share", type=number(float, 0, 1), default=NAME_SHARE,
                   help="embedded corpus: how often a sentence about the hero names it instead of "
                        "saying he/she (default %(default)s, the shipped corpus; docs/copying.md)")
    p.add_argument("--seed", type=SEED, default=0, help="seed for corpus, init, batches and masks")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default %(default)s)")
    p.add_argument("--threads", type=number(int, 1, 1024), default=None, help="torch CPU threads (default: all cores)")
    p.add_argument("--bf16", action=BooleanOptionalAction, default=True,
                   help="train under bf16 autocast where the hardware multiplies bf16 natively: CUDA "
                        "with bf16, or a CPU with AVX512-BF16 or AMX (default on; float32 elsewhere)")
    p.add_argument("--resume", action="store_true", help="continue --out from its .state.pt file")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out")
    m = p.add_argument_group("model")
    m.add_argument("--n-layer", type=number(int, 1, 1024), default=M.n_layer)
    m.add_argument("--n-head", type=number(int, 1, 1024), default=M.n_head)
    m.add_argument("--d-model", type=number(int, 2, 65536), default=M.d_model)
    m.add_argument("--seq-len", type=number(int, 8, 65536), default=M.max_seq_len, help="training window = model context")
    m.add_argument("--vocab-size", type=number(int, MIN_VOCAB, 65536), default=M.vocab_size,
                   help="BPE vocabulary incl. special tokens")
    m.add_argument("--qk-norm", action=BooleanOptionalAction, default=M.qk_norm, help="RMS-normalise queries and keys")
    m.add_argument("--relu2", action=BooleanOptionalAction, default=M.mlp_act == "relu2", help="ReLU^2 MLP instead of GELU")
    m.add_argument("--zero-init", action=BooleanOptionalAction, default=M.zero_init,
                   help="start the residual projections at zero")
    m.add_argument("--unigram-bias", action=BooleanOptionalAction, default=M.head_bias,
                   help="an output bias started at the log unigram frequencies of the training text")
    s = p.add_argument_group("schedule and objective")
    s.add_argument("--steps", type=positive_int, default=T.steps)
    s.add_argument("--minutes", type=number(float, 0, 10**6, lo_open=True), default=None,
                   help="time budget: the schedule runs on max(step share, time share) and training "
                        "stops when either is used up")
    s.add_argument("--batch-size", type=number(int, 1, 65536), default=T.batch_size)
    s.add_argument("--optimizer", choices=["adamw", "muon"], default=T.optimizer,
                   help="muon: Muon on the blocks' matrices, AdamW on the rest (default %(default)s)")
    s.add_argument("--lr", type=number(float, 0, 1000, lo_open=True), default=T.lr, help="peak AdamW learning rate")
    s.add_argument("--muon-lr", type=number(float, 0, 1000, lo_open=True), default=T.muon_lr, help="peak Muon learning rate")
    s.add_argument("--weight-decay", type=number(float, 0, 10), default=T.weight_decay)
    s.add_argument("--warmup", type=number(int, 0, 10**9), default=T.warmup, help="linear warm-up steps")
    s.add_argument("--schedule", choices=["cosine", "wsd"], default=T.schedule)
    s.add_argument("--cooldown", type=number(float, 0, 1), default=T.cooldown, help="wsd: share of the run spent decaying")
    s.add_argument("--t-min", type=number(float, 0, 1), default=T.t_min, help="training draws t ~ U[t-min, t-max]")
    s.add_argument("--t-max", type=number(float, 0, 1), default=T.t_max)
    s.add_argument("--plain-ce", action=BooleanOptionalAction, default=T.plain_ce,
                   help="train on masked CE without the 1/p weight")
    s.add_argument("--eval-interval", type=positive_int, default=100, help="validate and save every N steps")
    s.add_argument("--eval-mc", type=number(int, 1, 1024), default=16, help="Monte-Carlo samples per window in the final NELBO")
    s.add_argument("--curve-every", type=positive_int, default=None,
                   help="log the attention-sink emergence curve (minidlm/sinks.py) every N steps, for the "
                        "sink study (default: off)")
    s.add_argument("--copy-every", type=positive_int, default=None,
                   help="log the copy curve (minidlm/copy_probe.py: is the hero's name recovered from its "
                        "other mention?) every N steps, on the embedded corpus (default: off)")
    return p


OBJECTIVES = ("diffusion", "ar")
# what only the masked-diffusion objective uses (refused with --objective ar)
DIFFUSION_ONLY = ("t_min", "t_max", "plain_ce", "sink", "sink_no_rotation", "sink_value", "eval_mc", "curve_every",
                  "copy_every")


def parse_args(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    if args.objective == "ar":
        used = [flag for dest, flag in given_options(p, argv).items() if dest in DIFFUSION_ONLY]
        if used:
            p.error(f"{used[0]} is an option of the masked-diffusion objective; --objective ar trains on "
                    f"the next token with a causal mask (no masking, no [SINK], an exact validation NLL)")
    if args.sink_no_rotation and not args.sink:
        p.error("--sink-no-rotation needs --sink")
    if args.sink_value != "learned" and not args.sink:
        p.error("--sink-value needs --sink")
    if args.data and args.copy_every:
        p.error("--copy-every needs the embedded corpus (its stories name a hero twice): drop --data")
    if args.data and args.name_share != NAME_SHARE:
        p.error("--name-share changes the embedded corpus: drop --data")
    if args.t_min > args.t_max:
        p.error(f"--t-min {args.t_min} is above --t-max {args.t_max}")
    if args.d_model % args.n_head or (args.d_model // args.n_head) % 2:
        p.error(f"--d-model {args.d_model} must split into --n-head {args.n_head} heads of even size "
                f"(RoPE rotates pairs of dimensions)")
    return args


COPY_STORIES = 128  # held-out stories the copy probe tries (about 110 name their hero twice)

# what a resumed run must share with the saved one (model shape, data, batches, optimizer state)
RESUME_MUST_MATCH = ("objective", "train_fraction", "n_layer", "n_head", "d_model", "seq_len", "vocab_size", "sink", "sink_no_rotation",
                     "sink_value", "qk_norm", "relu2", "unigram_bias", "data", "name_share", "seed", "batch_size", "optimizer")


def model_config(args, vocab_size: int) -> ModelConfig:
    return ModelConfig(vocab_size=vocab_size, n_layer=args.n_layer, n_head=args.n_head,
                       d_model=args.d_model, max_seq_len=args.seq_len, sink=args.sink,
                       sink_rotation=not args.sink_no_rotation, sink_value=args.sink_value,
                       qk_norm=args.qk_norm,
                       mlp_act="relu2" if args.relu2 else "gelu", head_bias=args.unigram_bias,
                       zero_init=args.zero_init, causal=args.objective == "ar")


def state_owner(path: str):
    """The --out that the training state `path` was saved for, or None if it records none or
    cannot be read (an unreadable state is nobody's work to keep)."""
    try:
        saved = read(path)
    except CheckpointError:
        return None
    saved_args = saved.get("args") if isinstance(saved, dict) else None
    out = saved_args.get("out") if isinstance(saved_args, dict) else None
    return out if isinstance(out, str) else None


def preflight_paths(args):
    """Before any work: --out and its .state.pt are not an input (--data) or each other and may be
    written (tried, then cleaned up), inputs exist and are files, and no other run's work is
    replaced. Two --out names can share one state file (runs/a.pt and runs/a.pth both keep theirs
    in runs/a.state.pt, as checkpoint.state_path names it): a state file that records another
    --out, which still exists, is refused even with --force or --resume (that run could no longer
    be resumed); give --out another name."""
    state = state_path(args.out)
    if args.out.endswith(".state.pt"):
        die(f"--out {args.out} names a training-state file (.state.pt); give the model's file name, "
            f"e.g. {args.out[:-len('.state.pt')]}.pt")
    preflight(outputs={"--out": args.out, "the training state of --out": state}, inputs={"--data": args.data})
    if os.path.exists(args.out) and not (args.resume or args.force):
        die(f"{args.out} exists: pass --resume to continue it or --force to overwrite it")
    if os.path.exists(state):
        owner = state_owner(state)
        if owner is not None and not same_file(owner, args.out) and os.path.isfile(owner):
            die(f"{state} is the training state of {owner}, which this run would replace; give --out "
                f"another name")
        if not (args.resume or args.force):
            die(f"{state} exists (the training state of an earlier run): pass --resume to continue it "
                f"or --force to overwrite it")
    if args.resume:
        problem = check_readable_file(state, "training state to resume")
        if problem:
            die(problem)


def memory_needed(args, world: int = 1) -> tuple:
    """(parameters, bytes) of training this model on one process, a lower bound: float32 weights,
    gradients and two optimizer moments (16 bytes a parameter), and the activations the backward
    keeps (Korthikanti et al. 2022: seq * batch * d * 34 bytes a layer in 16 bits, twice that in
    float32, leaving out the attention matrices, which a fused attention kernel never stores) for
    this process's share of the batch."""
    d, L, V, T = args.d_model, args.n_layer, args.vocab_size, args.seq_len + int(args.sink)
    params = L * (12 * d * d + 4 * d) + 2 * V * d + V + d
    rows = max(1, args.batch_size // world)
    activations = 2 * L * T * rows * d * 34
    return params, 16 * params + activations


def device_memory(device) -> int | None:
    """Bytes of memory the device has in all (None if unknown)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[1]
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_size(args, device, world: int = 1):
    """Refuse, before building anything, a model (--d-model, --n-layer, --vocab-size) or batch
    (--batch-size x --seq-len) that cannot fit in this machine's memory."""
    params, need = memory_needed(args, world)
    have = device_memory(device)
    if have is not None and need > have:
        gb = lambda n: f"{n / 2**30:,.1f} GB" if n < 2**50 else f"{n:.1e} bytes"
        die(f"--n-layer {args.n_layer} --d-model {args.d_model} (--batch-size {args.batch_size} x --seq-len "
            f"{args.seq_len}) is a model of {params:,.0f} parameters that needs at least {gb(need)} to train; "
            f"this {device.type} has {gb(have)}: choose a smaller --d-model, --n-layer, --batch-size or --seq-len")


# what Run reads from a saved training state
STATE_KEYS = ("args", "step", "model", "optimizer", "tokenizer", "batch_rng", "mask_rng")


def resume_state(args) -> dict:
    """The saved training state of --out, if this run's settings match the saved run's."""
    try:
        state = read(state_path(args.out))
    except CheckpointError as e:
        die(f"cannot resume: {e}")
    missing = [k for k in STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing or not isinstance(state["args"], dict):
        why = f"it has no {missing[0]!r}" if missing else "its 'args' is not a dict"
        die(f"cannot resume: {state_path(args.out)} is not a training state saved by train_tiny.py ({why})")
    # older runs had only the learned sink, the diffusion objective, all of the data and the shipped corpus
    saved = {"sink_value": "learned", "objective": "diffusion", "train_fraction": 1.0, "name_share": NAME_SHARE,
             **state["args"]}
    for key in RESUME_MUST_MATCH:
        if key not in saved:
            die(f"cannot resume: {state_path(args.out)} was saved by an older train_tiny.py "
                f"(it has no --{key.replace('_', '-')}); start a new run")
        if saved[key] != getattr(args, key):
            die(f"cannot resume: --{key.replace('_', '-')} {getattr(args, key)} differs from the "
                f"saved run's {saved[key]}")
    return state


def load_data(args, state, device, say):
    """Documents, the tokenizer (trained here, or the resumed run's), the training token stream
    and 32 fixed validation windows."""
    t0 = time.time()
    try:
        train_docs, val_docs = load_documents(args.data, seed=args.seed, name_share=args.name_share)
    except CorpusError as e:
        die(str(e))
    tokenizer = (Tokenizer.from_state_dict(state["tokenizer"]) if state
                 else Tokenizer.train(train_docs, vocab_size=args.vocab_size))
    if args.train_fraction < 1:  # repeated data: the first share of the documents, seen more often
        train_docs = train_docs[:max(1, round(args.train_fraction * len(train_docs)))]
    train_stream = token_stream(tokenizer, train_docs)
    val_stream = token_stream(tokenizer, val_docs)
    if len(train_stream) < 2 * args.seq_len:
        die(f"training text has only {len(train_stream)} tokens; need at least {2 * args.seq_len} "
            f"for --seq-len {args.seq_len}")
    # The validation NELBO is a mean over windows, its error bar their spread: it needs two windows
    # at least, each long enough to hold some context (32 tokens, or --seq-len if shorter). A held-out
    # text shorter than two --seq-len windows is cut into two shorter ones (before, one window gave
    # "+- nan"); one shorter than two such windows cannot measure anything.
    need = 2 * min(32, args.seq_len)
    if len(val_stream) < need:
        die(f"the held-out 5 % of --data ({len(val_docs)} document(s)) has only "
            f"{len(val_stream)} tokens; the validation NELBO and its error bar need at least {need} (two "
            f"windows): give more text, or more documents (blank lines separate them)")
    window = min(args.seq_len, len(val_stream) // 2)
    if window < args.seq_len:
        say(f"note: the held-out text has {len(val_stream)} tokens, under two --seq-len windows: validating "
            f"on windows of {window} tokens")
    val = fixed_windows(val_stream, window, 32).to(device)
    say(f"data: {len(train_docs)} train / {len(val_docs)} val documents, {len(train_stream):,} / "
        f"{len(val_stream):,} tokens, vocab {tokenizer.vocab_size} ({time.time() - t0:.1f}s)")
    return tokenizer, train_stream, val, val_docs


def progress_line(step, progress, loss, tok_per_s, seconds):
    eta = seconds * (1 - progress) / max(progress, 1e-9)
    return (f"step {step} ({progress:.0%}) | loss {loss:.3f} | {tok_per_s / 1000:.1f}k tok/s | "
            f"trained {seconds / 60:.1f} min | ETA {eta / 60:.1f} min")


def command_line(argv) -> str:
    return "python " + " ".join(shlex.quote(a) for a in argv)


class Run:
    """One training run: the model, its optimizers and random streams, and what it records (the
    loss of every step, quick validations, the optional sink curve). All of it is saved at every
    evaluation, so a resumed run continues exactly where this one stopped."""

    def __init__(self, args, ranks, device, state, say):
        self.args, self.ranks, self.device, self.say = args, ranks, device, say
        self.tokenizer, self.train_stream, self.val, self.val_docs = load_data(args, state, device, say)
        torch.manual_seed(args.seed)
        self.cfg = model_config(args, self.tokenizer.vocab_size)
        try:
            self.model = DiffusionLM(self.cfg).to(device)
        except ValueError as e:
            die(str(e))
        if args.unigram_bias:  # start at the word-frequency solution instead of learning it first
            counts = torch.bincount(self.train_stream, minlength=self.cfg.vocab_size).float() + 1.0
            with torch.no_grad():
                self.model.head.bias.copy_((counts / counts.sum()).log())
        self.opts = build_optimizers(self.model, args.optimizer, args.lr, args.muon_lr, args.weight_decay)
        self.batch_gen = torch.Generator().manual_seed(args.seed)                 # which windows
        self.mask_gen = torch.Generator(device=device).manual_seed(args.seed + 1)  # which tokens are masked
        state = state or {}
        self.step = state.get("step", 0)
        self.train_seconds = state.get("train_seconds", 0.0)  # optimizer steps only
        self.curve = state.get("curve", [])    # sink emergence: one point per --curve-every steps
        self.copy_curve = state.get("copy_curve", [])  # the copy probe: one point per --copy-every steps
        self.evals = state.get("evals", [])    # quick validations along the run
        self.losses = state.get("losses", [])  # the training loss of every step
        if state:
            self.load_state(state)
            say(f"resuming {args.out} at step {self.step}")
            if state["args"].get("bf16", True) != args.bf16:
                say("warning: this run's --bf16/--no-bf16 differs from the saved run's")
        say(f"model: {self.model.num_params():,} parameters, {self.cfg}"
            + (f"; {ranks.world} processes, {args.batch_size // ranks.world} rows each" if ranks.distributed else ""))
        self.trained = ranks.wrap(self.model)  # the model itself, or DDP around it
        self.autocast = bf16_autocast(device) if args.bf16 else None
        say(f"arithmetic: {'float32' if self.autocast is None else 'bf16 autocast'} on {device.type}")
        self.unigram_bits = unigram_entropy_bits(self.val, self.cfg.vocab_size)
        self.tokens_per_step = args.batch_size * args.seq_len
        self.command = command_line(sys.argv)
        self.tty = sys.stderr.isatty()
        if args.copy_every:
            self.copy_stories = self.probe_stories()

    def probe_stories(self) -> list:
        """Held-out stories of the shipped corpus (whatever --name-share trains on) for the copy
        probe: the first COPY_STORIES, of which those naming their hero twice become cases."""
        stories = (self.val_docs if self.args.name_share == NAME_SHARE
                   else load_documents(None, seed=self.args.seed)[1])[:COPY_STORIES]
        if not make_cases(self.tokenizer, stories, "first", self.args.seq_len):
            die(f"--copy-every: no held-out story fits in --seq-len {self.args.seq_len}")
        return stories

    def load_state(self, state):
        """The saved weights, optimizer states and random streams, or one line if they do not fit."""
        try:
            saved = state["optimizer"]
            if not isinstance(saved, list) or len(saved) != len(self.opts):
                n = len(saved) if isinstance(saved, list) else type(saved).__name__
                raise ValueError(f"it holds {n} optimizer state(s) where --optimizer {self.args.optimizer} keeps "
                                 f"{len(self.opts)}")
            self.model.load_state_dict(state["model"])
            for opt, one in zip(self.opts, saved):
                opt.load_state_dict(one)
            self.batch_gen.set_state(state["batch_rng"])
            self.mask_gen.set_state(state["mask_rng"].to(self.mask_gen.get_state().device))
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            die(f"cannot resume: {state_path(self.args.out)} does not fit this run ({first}); start a new "
                f"run with --force")

    def progress(self) -> float:
        """Share of the run done: of the steps, or of the time budget if that runs out first."""
        done = self.step / self.args.steps
        minutes = self.args.minutes
        return max(done, self.train_seconds / (60 * minutes)) if minutes else done

    def resume_command(self) -> str:
        argv = [a for a in sys.argv if a != "--force"] + ([] if self.args.resume else ["--resume"])
        return command_line(argv)

    def train(self) -> bool:
        """The loop; returns whether it was interrupted (Ctrl-C or SIGTERM on any process)."""
        args, ranks = self.args, self.ranks
        start_step, start_seconds = self.step, self.train_seconds
        self.model.train()
        if args.curve_every and not self.curve and ranks.main:
            self.log_curve()
        if args.copy_every and not self.copy_curve and ranks.main:
            self.log_copy_curve()
        stopping = False  # agreed by every process, so all stop at the same step
        with GracefulStop() as stop:  # Ctrl-C: finish this step, save, and say how to resume
            while self.progress() < 1.0 and not stopping:
                tick = time.time()
                set_lr(self.opts, lr_factor(self.progress(), self.step, args.warmup, args.schedule, args.cooldown))
                x0 = random_windows(self.train_stream, args.batch_size, args.seq_len, self.batch_gen)
                loss = train_step(self.trained, self.opts, x0.to(self.device), self.tokenizer.mask_id,
                                  self.mask_gen, args, ranks.rows(args.batch_size), self.autocast,
                                  bos_id=self.tokenizer.eot_id)
                loss_value = ranks.mean(loss).item()
                if not math.isfinite(loss_value):
                    die(f"loss became {loss_value} at step {self.step}; stopping. The last good checkpoint "
                        f"({args.out}, step saved there) is intact. Try a lower --lr.", code=1)
                self.step += 1
                self.losses.append(loss_value)
                stopping, self.train_seconds = ranks.agree(float(stop.requested),
                                                           self.train_seconds + time.time() - tick)
                done = self.progress() >= 1.0
                if not ranks.main:
                    continue
                if self.tty or self.step % 25 == 0 or done:
                    tok_s = (self.step - start_step) * self.tokens_per_step / (self.train_seconds - start_seconds)
                    line = progress_line(self.step, self.progress(), loss_value, tok_s, self.train_seconds)
                    print("\r" + line if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)
                if args.curve_every and (self.step % args.curve_every == 0 or done):
                    self.log_curve()
                if args.copy_every and (self.step % args.copy_every == 0 or done):
                    self.log_copy_curve()
                if self.step % args.eval_interval == 0 and not done:
                    nats, se = self.validate(n_mc=4)
                    self.record_eval(nats)
                    self.report(f"step {self.step}: quick", nats, se)
                    self.save()
        return bool(stopping)

    def log_curve(self):
        point = {"step": self.step, "tokens": self.step * self.tokens_per_step,
                 **training_curve_point(self.model, self.val[:8], self.tokenizer.mask_id, seed=self.args.seed)}
        self.curve.append(point)
        sink = f", mass on [SINK] {point['sink_mass']:.1%}" if point["sink_mass"] is not None else ""
        self.say(f"step {self.step}: top content sink mass {point['top_mass']:.1%}, its value norm / mean "
                 f"{point['top_value_ratio']:.2f}{sink}")

    def log_copy_curve(self):
        point = {"step": self.step, "tokens": self.step * self.tokens_per_step,
                 "train_seconds": self.train_seconds,
                 **copy_curve_point(self.model, self.tokenizer, self.copy_stories)}
        self.copy_curve.append(point)
        self.say(f"step {self.step}: copy probe: hero's name recovered at its first mention "
                 f"{point['first_recovered']:.1%}, at a later one {point['later_recovered']:.1%} "
                 f"(p right {point['first_p_right']:.3f} / best wrong {point['first_p_rival']:.3f}; margin "
                 f"{point['first_margin']:.2f} / {point['later_margin']:.2f} nats)")

    def validate(self, n_mc):
        """Validation nats/token: the NELBO (a bound, n_mc samples per window), or for the
        autoregressive model the exact NLL."""
        self.model.eval()
        if self.cfg.causal:
            nats, se = evaluate_nll(self.model, self.val, self.tokenizer.eot_id)
        else:
            nats, se = evaluate_nelbo(self.model, self.val, self.tokenizer.mask_id, n_mc=n_mc, seed=self.args.seed)
        self.model.train()
        return nats, se

    def record_eval(self, nats):
        self.evals.append({"step": self.step, "tokens": self.step * self.tokens_per_step,
                           "train_seconds": self.train_seconds, "bits": nats / math.log(2)})

    def report(self, label, nats, se):
        describe = describe_nll if self.cfg.causal else describe_nelbo
        self.say(("\n" if self.tty else "") + f"{label}: model {describe(nats, se)}; word frequencies "
                 f"alone {self.unigram_bits:.2f} bits/token")

    def save(self, final_metrics=None):
        args, records = self.args, {"curve": self.curve, "copy_curve": self.copy_curve, "evals": self.evals,
                                    "losses": self.losses}
        meta = {"command": self.command, "args": vars(args), "objective": args.objective,
                "bf16": self.autocast is not None,
                "step": self.step, "metrics": final_metrics or {}, "unigram_bits_per_token": self.unigram_bits,
                **records}
        save_model(args.out, self.model, self.tokenizer, meta)
        atomic_save({"args": vars(args), "step": self.step, "model": self.model.state_dict(),
                     "optimizer": [opt.state_dict() for opt in self.opts],
                     "tokenizer": self.tokenizer.state_dict(), "batch_rng": self.batch_gen.get_state(),
                     "mask_rng": self.mask_gen.get_state().cpu(), "train_seconds": self.train_seconds,
                     **records}, state_path(args.out))

    def finish(self):
        """The final NELBO (and, on the embedded corpus, the grammatical rate of greedy samples),
        saved with the model. The trained weights are saved first: this takes about a minute."""
        args = self.args
        self.save()
        if self.tty:
            print(file=sys.stderr)
        nats, se = self.validate(n_mc=args.eval_mc)
        minutes = self.train_seconds / 60
        measure = "nll" if self.cfg.causal else "nelbo"  # exact, or the bound
        metrics = {f"val_{measure}_nats": nats, f"val_{measure}_se": se, "val_bits_per_token": nats / math.log(2),
                   "unigram_bits_per_token": self.unigram_bits, "train_minutes": minutes,
                   "tokens_seen": self.step * self.tokens_per_step}
        self.record_eval(nats)
        self.report(f"final ({minutes:.1f} min of training, {self.step} steps)", nats, se)
        if args.data is None:  # the embedded corpus has a grammar to score samples against
            metrics.update(self.grammatical_rate())
        self.save(metrics)
        print(f"saved {args.out}", file=sys.stderr)

    def grammatical_rate(self) -> dict:
        self.model.eval()
        prompts = held_out_prompts(self.val_docs, 32)
        room = self.args.seq_len - 1 - max(len(self.tokenizer.encode(t)) for t in prompts)
        gen = min(64, room // 32 * 32)  # whole 32-token blocks that fit beside the longest prompt
        if gen <= 0:
            print(f"no grammatical rate: --seq-len {self.args.seq_len} leaves no room to sample 32 tokens "
                  f"after a prompt", file=sys.stderr)
            return {}
        rate, n, _ = sample_grammatical_rate(self.model, self.tokenizer, prompts,  # left to right if causal
                                             SamplerConfig(gen_length=gen, steps=gen, block_length=32))
        self.say(f"grammatical rate of greedy samples: {rate:.1%} of {n} sentences")
        return dict(grammatical_rate=rate, grammatical_sentences=n)


def main():
    args = parse_args()
    ranks = Ranks()  # one process, or one of several under torchrun (minidlm/distributed.py)
    say = partial(print, file=sys.stderr) if ranks.main else (lambda *a, **k: None)
    device = ranks.device(device_or_die(args.device, args.threads))
    if args.batch_size % ranks.world:
        die(f"--batch-size {args.batch_size} is the global batch: it must split evenly over "
            f"{ranks.world} processes")
    check_size(args, device, ranks.world)
    if ranks.main:
        preflight_paths(args)
    ranks.start(device)
    run = Run(args, ranks, device, resume_state(args) if args.resume else None, say)
    interrupted = run.train()
    ranks.stop()
    if not ranks.main:
        sys.exit(130 if interrupted else 0)
    if interrupted:
        run.save()
        print(f"\ninterrupted at step {run.step}: saved {args.out} and {state_path(args.out)}; continue with: "
              f"{run.resume_command()}", file=sys.stderr)
        sys.exit(130)
    try:
        run.finish()
    except KeyboardInterrupt:
        print(f"\ninterrupted during the final evaluation: {args.out} holds the trained model (step "
              f"{run.step}) without its final metrics; evaluate it with: {run.resume_command()}", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    run_main(main)
