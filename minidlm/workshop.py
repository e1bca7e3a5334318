"""The workshop notebook's helpers (docs/workshop.ipynb): each is a few lines that a class would
otherwise read as glue, so the notebook's cells stay calls into the package.

- `masked_view`: a row of ids as text with every [MASK] a grey block (the forward process);
- `nelbo_by_t`: the NELBO's integrand at fixed noise levels t, in bits (the objective as a curve);
- `plot_nelbo_by_t`: that curve, drawn beside the NELBO and the word-frequency entropy;
- `plot_training`: a checkpoint's saved training loss, validation NELBO and word-frequency line;
- `decode_each`: one batch decoded under several sampler settings, with what each costs and how
  often it repeats (the caches, the Repeat Curse);
- `markdown_table`: such rows as a markdown table;
- `sink_probe`: the attention-sink probe's summary over one greedy decode;
- `fill`: one text with `<|hole:N|>`s filled in (infilling).
"""
import math

import torch

from .cli import timed
from .diffusion import nelbo_loss
from .holes import encode_canvas, filled_text
from .repetition import clean_response, repetition_report
from .sampler import SamplerConfig, generate, infill
from .show import MASK_GLYPH, marked_text
from .sinks import SinkProbe


def masked_view(tokenizer, ids, glyph: str = MASK_GLYPH) -> str:
    """Decode `ids` token by token with each [MASK] drawn as `glyph` (its width: one token) and
    end-of-text as a pilcrow, so a partly masked row reads as text with holes."""
    pieces = []
    for t in (ids.tolist() if hasattr(ids, "tolist") else ids):
        if t == tokenizer.mask_id:
            pieces.append(glyph)
        elif t == tokenizer.eot_id:
            pieces.append("\u00b6")
        else:
            pieces.append(tokenizer.decode([t]))
    return "".join(pieces)


@torch.no_grad()
def nelbo_by_t(model, windows, mask_id: int, ts, seed: int = 0) -> list:
    """The NELBO's integrand at each noise level t of `ts`, in bits per token: `nelbo_loss` with
    t fixed (every window masked with probability p(t), each masked token's cross-entropy weighted
    1/p), i.e. about the mean cross-entropy of a masked token when a share t of the text is masked.
    The NELBO is this curve's mean over t in [0, 1]."""
    g = torch.Generator(device=windows.device).manual_seed(seed)
    return [nelbo_loss(model, windows, mask_id, g, t_min=t, t_max=t).item() / math.log(2) for t in ts]


def plot_nelbo_by_t(ax, ts, bits, nelbo=None, unigram=None):
    """Draw `nelbo_by_t`'s curve on matplotlib axes `ax`, with the NELBO (its mean over t) and the
    word-frequency entropy as horizontal lines when given. Returns ax."""
    ax.plot(ts, bits, "o-", label="cross-entropy of a masked token at this t")
    if nelbo is not None:
        ax.axhline(nelbo, color="C1", lw=1.5, label=f"NELBO = the curve's mean over t: {nelbo:.2f} bits/token")
    if unigram is not None:
        ax.axhline(unigram, color="grey", ls="--", lw=1, label=f"word frequencies alone: {unigram:.2f} bits/token")
    ax.set_xlabel("t: the share of the text that is masked")
    ax.set_ylabel("bits per masked token")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, None)
    return ax


def moving_average(xs, n: int) -> list:
    """The mean of each run of up to n values ending at each index (shorter at the start)."""
    out, total = [], 0.0
    for i, x in enumerate(xs):
        total += x - (xs[i - n] if i >= n else 0.0)
        out.append(total / min(i + 1, n))
    return out


def plot_training(ax, meta: dict, label: str, color=None, smooth: int = 25):
    """Draw a checkpoint's training on matplotlib axes `ax` against the step: the training loss
    of every step in bits (faint) and its moving average over `smooth` steps, the validation
    NELBO (dots, `meta["evals"]`) and the word-frequency entropy (dashed, only once per axes).
    Returns ax. The training loss uses t in [0.15, 0.85], so it is not the NELBO: the dots are."""
    bits = [loss / math.log(2) for loss in meta.get("losses", [])]
    steps = range(1, len(bits) + 1)
    line, = ax.plot(steps, bits, alpha=0.25, lw=0.8, color=color)
    color = line.get_color()
    ax.plot(steps, moving_average(bits, smooth), color=color, lw=1.8,
            label=f"{label}: training loss (t in [0.15, 0.85]), mean of {smooth} steps")
    evals = meta.get("evals") or []
    if evals:
        ax.plot([e["step"] for e in evals], [e["bits"] for e in evals], "o", color=color, ms=5,
                label=f"{label}: validation NELBO (all t)")
    unigram = meta.get("unigram_bits_per_token")
    if unigram is not None and not any(l.get_label().startswith("word frequencies") for l in ax.get_lines()):
        ax.axhline(unigram, color="grey", ls="--", lw=1,
                   label=f"word frequencies alone: {unigram:.2f} bits/token")
    ax.set_xlabel("training step (8 x 256 tokens each)")
    ax.set_ylabel("bits per token")
    return ax


def decode_each(model, tokenizer, prompts, configs: dict, seed: int = 0) -> list:
    """Decode the same prompts (texts) once per setting in `configs` ({label: SamplerConfig}).
    One dict per setting: label, out (B, gen_length) ids, seconds, tokens_per_s, rows (rows
    computed per layer, averaged over layers), same (share of tokens equal to the first
    setting's), repetition (repetition.RepetitionReport over the cleaned responses), and for the
    first prompt its marked text (repeats in [[brackets]]) and repeated pairs."""
    ids = [tokenizer.prompt(p) for p in prompts]
    device = next(model.parameters()).device
    rows, first = [], None
    for label, cfg in configs.items():
        stats = {}
        out, seconds = timed(device, lambda: generate(model, ids, tokenizer.mask_id, tokenizer.eot_id, cfg,
                                                      seed=seed, stats=stats))
        first = out if first is None else first
        cleaned = [clean_response(row, tokenizer.eot_id, tokenizer.is_whitespace_token) for row in out.tolist()]
        text, repeats = marked_text(tokenizer, out[0].tolist(), colour=False)
        rows.append(dict(label=label, out=out, seconds=seconds, tokens_per_s=out.numel() / seconds,
                         rows=sum(stats["rows_per_layer"]) / len(stats["rows_per_layer"]),
                         same=(out == first).float().mean().item(), repetition=repetition_report(cleaned),
                         text=text, repeats=repeats))
    return rows


def sink_probe(model, tokenizer, text: str, gen_length: int = 64) -> dict:
    """Continue `text` greedily by gen_length tokens, one per step in one block, with the sink probe
    (sinks.SinkProbe) watching every step; returns its summary."""
    prompt = tokenizer.prompt(text)
    probe = SinkProbe(model, tokenizer, [len(prompt)])
    cfg = SamplerConfig(gen_length=gen_length, steps=gen_length, block_length=gen_length)
    generate(model, [prompt], tokenizer.mask_id, tokenizer.eot_id, cfg, on_step=probe, observe=True)
    return probe.summary()


def markdown_table(rows, columns: dict) -> str:
    """rows (dicts) as a markdown table; columns: {header: function of a row -> its cell text}."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(cell(row)) for cell in columns.values()) + " |" for row in rows]
    return "\n".join(lines)


def fill(model, tokenizer, text: str, seed: int = 0, temperature: float = 0.0) -> tuple:
    """Fill the `<|hole:N|>`s of one text, one token per step, all holes as one block (greedy
    unless a temperature is given). Returns (the whole text, the filled-in pieces)."""
    canvas = encode_canvas(tokenizer, text)
    n = canvas.count(tokenizer.mask_id)
    if n == 0:
        raise ValueError(f"{text!r} has no <|hole:N|> to fill")
    cfg = SamplerConfig(gen_length=n, steps=n, block_length=n, temperature=temperature)
    out = infill(model, [canvas], tokenizer.mask_id, tokenizer.eot_id, cfg, seed=seed)
    return filled_text(tokenizer, canvas, out[0])
