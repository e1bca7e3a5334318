"""Copy probe: does the model carry the hero's name from one mention of it to another?

Filling a hole well needs more than local grammar: in "[MASK] was a shy girl. ... Mia hugged the
ball." the only place the name can come from is the later mention, so the model must find it and
copy it (an induction or copy behaviour: attend to the other mention and write its tokens). The
embedded corpus names its hero in the first sentence and, in most stories, again later
(`repeat_stats` counts how often and how far apart). For each held-out story whose hero is named
at least twice, one mention becomes a hole of exactly its token count and the rest of the story
stays visible:

- first: the introduction is the hole; the name appears only to its right;
- later: the second mention is the hole; the introduction is to its left.

Per case, from one forward: the probability of the right name (the product over the hole's tokens
of each position's probability) against the BEST wrong name of the same gender and token count
(the hole's size gives the token count away; "she" or "girl" elsewhere give the gender away, so
these are the names a model that does not copy cannot rule out). Then greedy decoding of the hole,
one token per forward at the most confident masked position: "recovered" when it writes the name.
A model that knows the gender but does not copy prefers the right name about 1 time in as many
names as share its gender and token count (`chance`), and its margin, log p(right) minus the mean
log p of those rivals, is about 0 nats: the margin rises before the right name starts to win.
"""
import re
import statistics
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .corpus import NAMES
from .data import pad_prompts, padding_bias

GENDER = {name: gender for gender, names in NAMES.items() for name in names}
_ANY_NAME = re.compile(r"\b(" + "|".join(GENDER) + r")\b")
MENTIONS = ("first", "later")


def hero_mentions(story: str) -> tuple:
    """(the hero's name, (start, end) of each mention): the hero is the first name in the story."""
    first = _ANY_NAME.search(story)
    if first is None:
        return None, []
    name = first.group(1)
    return name, [(m.start(), m.end()) for m in re.finditer(rf"\b{name}\b", story)]


def repeat_stats(tokenizer, stories) -> dict:
    """How often the corpus makes copying pay: stories whose hero is named more than once, the
    number of mentions, and the distance in tokens from each mention to the next."""
    mentions, gaps = [], []
    for story in stories:
        _, spans = hero_mentions(story)
        mentions.append(len(spans))
        starts = [len(tokenizer.encode(story[:s])) for s, _ in spans]
        gaps += [b - a for a, b in zip(starts, starts[1:])]
    n = len(stories)
    return {"stories": n, "repeat_share": sum(m > 1 for m in mentions) / n,
            "mean_mentions": sum(mentions) / n,
            "mentions_histogram": {k: mentions.count(k) for k in sorted(set(mentions))},
            "gap_median": statistics.median(gaps) if gaps else None,
            "gap_mean": statistics.mean(gaps) if gaps else None, "gap_max": max(gaps, default=None)}


@dataclass(frozen=True)
class Case:
    """One probe: the canvas (end-of-text first, the mention as [MASK]s), where the hole is, the
    name's ids there, the ids of each other name of the same gender and token count, and where
    the name's tokens stand elsewhere in the canvas (what a copy would read)."""
    name: str
    canvas: tuple
    hole: tuple
    answer: tuple
    rivals: tuple
    others: tuple = ()


def name_ids(tokenizer, name: str, spaced: bool) -> tuple:
    return tuple(tokenizer.encode((" " if spaced else "") + name))


def make_case(tokenizer, story: str, mention: str):
    """The Case of one story and mention ("first" or "later"), or None when the hero is named once.
    The space before a name belongs to the hole (BPE words carry their leading space)."""
    name, spans = hero_mentions(story)
    if len(spans) < 2:
        return None
    start, end = spans[0] if mention == "first" else spans[1]
    prefix, suffix = story[:start], story[end:]
    spaced = prefix.endswith(" ")
    answer = name_ids(tokenizer, name, spaced)
    left = [tokenizer.eot_id] + tokenizer.encode(prefix[:-1] if spaced else prefix)
    canvas = left + [tokenizer.mask_id] * len(answer) + tokenizer.encode(suffix)
    rivals = tuple(ids for other in NAMES[GENDER[name]] if other != name
                   for ids in [name_ids(tokenizer, other, spaced)] if len(ids) == len(answer))
    hole = tuple(range(len(left), len(left) + len(answer)))
    others = set()  # every token of the name elsewhere, spelled after a space or not
    for ids in {name_ids(tokenizer, name, True), name_ids(tokenizer, name, False)}:
        for i in range(len(canvas) - len(ids) + 1):
            if tuple(canvas[i:i + len(ids)]) == ids:
                others.update(range(i, i + len(ids)))
    return Case(name, tuple(canvas), hole, answer, rivals, tuple(sorted(others)))


def make_cases(tokenizer, stories, mention: str, max_len: int) -> list:
    """The cases of the stories that name their hero twice and fit in `max_len` tokens."""
    cases = [make_case(tokenizer, story, mention) for story in stories]
    return [c for c in cases if c is not None and len(c.canvas) <= max_len]


def _padded(model, x, n_pad, **kwargs):
    """The model's forward over left-padded rows: true positions, the padding hidden from attention."""
    L = x.shape[1]
    positions = torch.arange(L, device=x.device) - n_pad[:, None]
    bias = padding_bias(n_pad, L) if bool((n_pad > 0).any()) else None
    return model(x, positions=positions, attn_bias=bias, **kwargs)


def _forward(model, x, n_pad, mask_id):
    """Log-probabilities (B, L, V) of left-padded rows, [MASK] never a prediction."""
    logits = _padded(model, x, n_pad).float()
    logits[..., mask_id] = float("-inf")
    return logits.log_softmax(-1)


def _score(logp_row, hole, ids) -> float:
    return sum(logp_row[i, t].item() for i, t in zip(hole, ids))


@torch.no_grad()
def probe_cases(model, tokenizer, cases, batch_size: int = 64) -> list:
    """Per case: log p(right name), log p(best rival), the margin (log p(right) minus the mean
    log p of the rivals: 0 for a model that does not tell them apart, above 0 as soon as it leans
    toward the right name, before it wins) and whether greedy decoding writes the name."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for at in range(0, len(cases), batch_size):
        chunk = cases[at:at + batch_size]
        x, n_pad = pad_prompts([list(c.canvas) for c in chunk], tokenizer.eot_id, device)
        shift = n_pad.tolist()
        logp = _forward(model, x, n_pad, tokenizer.mask_id)
        scores = []
        for r, c in enumerate(chunk):
            hole = [shift[r] + i for i in c.hole]
            rivals = [_score(logp[r], hole, ids) for ids in c.rivals]
            scores.append((_score(logp[r], hole, c.answer), rivals))
        for _ in range(max(len(c.hole) for c in chunk)):  # greedy: one token per forward per row
            masked = x == tokenizer.mask_id
            if not masked.any():
                break
            conf, best = logp.max(-1)
            conf = conf.masked_fill(~masked, float("-inf"))
            pos = conf.argmax(1)
            rows = masked.any(1).nonzero().squeeze(1)
            x[rows, pos[rows]] = best[rows, pos[rows]]
            logp = _forward(model, x, n_pad, tokenizer.mask_id)
        for r, (c, (right, rivals)) in enumerate(zip(chunk, scores)):
            written = tuple(x[r, shift[r] + i].item() for i in c.hole)
            out.append({"right": right, "rival": max(rivals, default=float("-inf")),
                        "margin": right - sum(rivals) / len(rivals) if rivals else 0.0,
                        "recovered": written == c.answer})
    model.train(was_training)
    return out


def summarize(results, cases) -> dict:
    """Means over cases: p(right), p(best rival), the share where the right name beats every rival
    ("prefers"), the margin in nats, the share recovered by greedy decoding, and the prefers-rate
    of a guess (chance)."""
    n = max(len(results), 1)
    return {"cases": len(results),
            "p_right": sum(torch.tensor(r["right"]).exp().item() for r in results) / n,
            "p_rival": sum(torch.tensor(r["rival"]).exp().item() for r in results) / n,
            "prefers": sum(r["right"] > r["rival"] for r in results) / n,
            "margin": sum(r["margin"] for r in results) / n,
            "recovered": sum(r["recovered"] for r in results) / n,
            "chance": sum(1 / (1 + len(c.rivals)) for c in cases) / max(len(cases), 1)}


def copy_probe(model, tokenizer, stories, batch_size: int = 64) -> dict:
    """{mention: summary} over the stories, for both mentions."""
    out = {}
    for mention in MENTIONS:
        cases = make_cases(tokenizer, stories, mention, model.cfg.max_seq_len)
        out[mention] = summarize(probe_cases(model, tokenizer, cases, batch_size), cases)
    return out


def training_curve_point(model, tokenizer, stories) -> dict:
    """The copy curve's point that train_tiny.py --copy-every logs: both mentions, flattened."""
    return {f"{mention}_{key}": value for mention, summary in copy_probe(model, tokenizer, stories).items()
            for key, value in summary.items() if key in ("p_right", "p_rival", "prefers", "margin", "recovered")}


@torch.no_grad()
def attention_on_mentions(model, tokenizer, cases, batch_size: int = 32):
    """Where a copy would read: per layer and head, the attention weight the hole's rows put on
    the tokens of the name's other mentions (summed over those keys, averaged over the hole's
    rows, then over cases), as an (n_layer, n_head) tensor; and what uniform attention would put
    there (the share of the keys those tokens are: the canvas, and the [SINK] where there is one),
    for scale. Cases without another mention are skipped."""
    cases = [c for c in cases if c.others]
    device = next(model.parameters()).device
    S = int(model.cfg.sink)
    total = torch.zeros(model.cfg.n_layer, model.cfg.n_head, device=device)
    was_training = model.training
    model.eval()
    for at in range(0, len(cases), batch_size):
        chunk = cases[at:at + batch_size]
        x, n_pad = pad_prompts([list(c.canvas) for c in chunk], tokenizer.eot_id, device)
        _, trace = _padded(model, x, n_pad, trace=True)
        for r, c in enumerate(chunk):
            shift = S + n_pad[r].item()  # (the sink is query row 0 and key 0 of an uncached forward)
            rows = torch.tensor([shift + i for i in c.hole], device=device)
            keys = torch.tensor([shift + i for i in c.others], device=device)
            for layer, weights in enumerate(trace.attn):
                total[layer] += weights[r][:, rows][:, :, keys].sum(-1).mean(-1).float()
    model.train(was_training)
    uniform = sum(len(c.others) / (len(c.canvas) + S) for c in cases) / max(len(cases), 1)
    return (total / max(len(cases), 1)).cpu(), uniform


@contextmanager
def head_zeroed(model, layer: int, head: int):
    """Inside the block, attention head `head` of layer `layer` writes nothing: its slice of the
    output projection's input is zero (the ablation that asks whether that head does the copy).
    The model is unchanged outside the block."""
    size = model.cfg.d_model // model.cfg.n_head

    def silence(_module, inputs):
        x = inputs[0].clone()
        x[..., head * size:(head + 1) * size] = 0
        return (x,)

    handle = model.blocks[layer].attn.wo.register_forward_pre_hook(silence)
    try:
        yield model
    finally:
        handle.remove()
