"""The reverse process: LLaDA's sampler (arXiv 2502.09992, Algorithm 4 / low-confidence remasking).

Read `llada_generate` first: the whole method in a plain loop. `infill` generalises it and is
tested to give the same tokens: [MASK]s anywhere in a canvas (holes), a batch of rows of
different lengths (LEFT-padded: padded keys get -inf through the model's attention bias and each
row's positions start at 0, so rows are independent), sampling at a temperature (argmax of
logits / T + Gumbel noise drawn in float64) or random remasking, caches (cache.py) and CoTA
(cota.py). `generate` is the case "prompt, then one hole of gen_length at the end".
The holes are cut into blocks of `block_length`, decoded in text order in `steps / num_blocks`
steps each; a step commits the k most confident masked positions of the block, k following the
even schedule (`transfer_schedule`). Every row has the same number of holes, so one batched
`topk` commits k tokens per row: the step loop has no host sync and no Python loop over rows.

`threshold=P` is Fast-dLLM's parallel decoding (arXiv 2505.22618) instead of the schedule: a
step commits every masked position of the block whose confidence is >= P, and at least the most
confident one (`commit_confident`), so each row fills its block at its own pace and a block takes
as many steps as its least sure row needs. A row whose block is full waits (commits nothing) until
every row's is; then the next block starts, and every cache refreshes fully there (prefix and
dual always do; the feature cache restarts its clock), so no row's tokens depend on the others'
pace. Knowing that the block is full takes ONE host sync per step, `bool(... .any())`.
"""
import math
import itertools
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from .cache import CACHES, FeatureCache
from .data import pad_prompts, padding_bias
from .refresh import LeastSimilar, StaleFirst
from .cota import CoTA, CoTAConfig


@torch.no_grad()
def llada_generate(model, prompt, mask_id: int, gen_length=128, steps=128, block_length=32):
    """LLaDA's reverse process, plainly: greedy, low-confidence remasking, blocks left to right.
    prompt: (B, P) token ids, every row the same length. Returns the (B, gen_length) answers."""
    B, P = prompt.shape
    x = torch.cat([prompt, torch.full((B, gen_length), mask_id, dtype=prompt.dtype, device=prompt.device)], dim=1)
    num_blocks = gen_length // block_length
    per_block = steps // num_blocks                           # denoising steps per block
    for b in range(num_blocks):
        lo, hi = P + b * block_length, P + (b + 1) * block_length  # the block being decoded
        for i in range(per_block):
            k = block_length // per_block + (i < block_length % per_block)  # tokens to commit now
            logits = model(x)                                 # predict every position at once
            logits[..., mask_id] = float("-inf")              # [MASK] is never an answer
            x0 = logits.argmax(-1)                            # the best guess everywhere
            conf = F.softmax(logits, dim=-1).gather(-1, x0[..., None]).squeeze(-1)  # and how sure
            conf[x != mask_id] = float("-inf")                # only still-masked positions ...
            conf[:, :lo] = conf[:, hi:] = float("-inf")       # ... of the current block compete
            chosen = conf.topk(k, dim=-1).indices             # the k most confident
            x.scatter_(1, chosen, x0.gather(1, chosen))       # commit them: they never change
    return x[:, P:]


REMASKING = ("low_confidence", "random")


# The smallest temperature but 0. Below it, logits / T overflows float64 (1e-320 made every positive
# logit inf, and argmax then took the FIRST of them, not the largest), and long before that it
# samples exactly what greedy decoding gives: use 0 for greedy.
MIN_TEMPERATURE = 1e-6


@dataclass
class SamplerConfig:
    gen_length: int = 128
    steps: int = 128
    block_length: int = 32
    temperature: float = 0.0
    remasking: str = "low_confidence"  # or "random"
    threshold: float | None = None     # None: the fixed schedule; P in (0, 1]: commit every conf >= P
    cache: str = "none"                # none, prefix, dual or feature (cache.py)
    cache_kp: int = 25                 # feature cache: prompt refresh interval K_p
    cache_kr: int = 7                  # feature cache: response refresh interval K_r
    cache_rho: float = 0.25            # feature cache: fraction of response rows refreshed
    cache_stale_first: bool = False    # feature cache: refresh rows next to new commits first (ours)
    cache_fresh_values: bool = False   # feature cache: every response row's fresh V (dLLM-Cache's hook)
    cota: CoTAConfig = field(default_factory=CoTAConfig)  # CTAE / CTEV (cota.py); off by default

    def validate(self, max_prompt_len: int, max_seq_len: int):
        """Raise ValueError with one clear sentence for an impossible setting."""
        if self.gen_length <= 0 or self.steps <= 0 or self.block_length <= 0:
            raise ValueError("gen length, steps and block length must be positive")
        if self.gen_length % self.block_length:
            raise ValueError(f"gen length {self.gen_length} is not divisible by block length "
                             f"{self.block_length}")
        num_blocks = self.gen_length // self.block_length
        if self.steps % num_blocks:
            raise ValueError(f"steps {self.steps} is not divisible by the number of blocks "
                             f"{num_blocks} (gen length / block length)")
        if self.steps // num_blocks > self.block_length:
            raise ValueError(f"{self.steps // num_blocks} steps per block exceed the block length "
                             f"{self.block_length}: some steps would commit nothing")
        if not (self.temperature == 0 or MIN_TEMPERATURE <= self.temperature < math.inf):
            raise ValueError(f"temperature must be 0 (greedy) or from {MIN_TEMPERATURE:g} on, got {self.temperature}")
        if self.remasking not in REMASKING:
            raise ValueError(f"remasking must be one of {', '.join(REMASKING)}, got {self.remasking!r}")
        if self.threshold is not None:
            if not 0 < self.threshold <= 1:
                raise ValueError(f"threshold must be within (0, 1], got {self.threshold}")
            if self.remasking == "random":
                raise ValueError("a confidence threshold needs low-confidence remasking: random "
                                 "remasking scores positions by a coin toss, which no threshold can judge")
        if self.cache not in CACHES:
            raise ValueError(f"cache must be one of {', '.join(CACHES)}, got {self.cache!r}")
        if self.cache_kp < 1 or self.cache_kr < 1 or not 0 <= self.cache_rho <= 1:
            raise ValueError("cache K_p and K_r must be >= 1 and rho within [0, 1]")
        self.cota.validate()
        if max_prompt_len + self.gen_length > max_seq_len:
            raise ValueError(f"prompt ({max_prompt_len} tokens) + gen length ({self.gen_length}) "
                             f"exceeds the model's context of {max_seq_len} tokens")


def transfer_schedule(n: int, steps: int) -> list:
    """Tokens committed at each of `steps` steps for n masks: the even schedule."""
    base, extra = divmod(n, steps)
    return [base + (1 if s < extra else 0) for s in range(steps)]


def choose_tokens(logits, temperature: float, generator):
    """x0_hat = argmax(logits / T + Gumbel), the Gumbel noise in float64 (arXiv 2409.02908)."""
    if temperature == 0:
        return logits.argmax(-1)
    u = torch.rand(logits.shape, generator=generator, dtype=torch.float64, device=logits.device)
    gumbel = -torch.log(-torch.log(u.clamp_min(1e-300)))
    return (logits.double() / temperature + gumbel).argmax(-1)


def step_scores(x, logits, eligible, cfg: SamplerConfig, generator, mask_id: int, penalty=None):
    """x0_hat and the score of every position: confidence (or a uniform draw), minus CTEV's
    entropy penalty when one is given, -inf off the eligible set."""
    logits[..., mask_id] = float("-inf")  # [MASK] is never a target, so never a prediction
    x0 = choose_tokens(logits, cfg.temperature, generator)
    if cfg.remasking == "low_confidence":
        # softmax in float32 at least: in bf16/fp16 near-equal confidences would tie and reorder
        probs = F.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
        conf = probs.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
    else:
        conf = torch.rand(x.shape, generator=generator, device=x.device)
    if penalty is not None:
        conf = conf - penalty
    return x0, conf.masked_fill(~eligible, float("-inf"))


def commit(x, logits, eligible, k: int, cfg: SamplerConfig, generator, mask_id: int, penalty=None):
    """One step of the fixed schedule: commit the k highest-scoring eligible positions of every
    row, in place. Returns (x0_hat, scores); `scores` is what the ranking used."""
    x0, scores = step_scores(x, logits, eligible, cfg, generator, mask_id, penalty)
    chosen = scores.topk(k, dim=-1).indices
    x.scatter_(1, chosen, x0.gather(1, chosen))
    return x0, scores


def commit_confident(x, logits, eligible, cfg: SamplerConfig, generator, mask_id: int, penalty=None):
    """One step of threshold decoding (Fast-dLLM): commit, in place, every eligible position whose
    score is >= cfg.threshold, and the row's single best one whatever its score; a row with
    nothing eligible commits nothing. Returns (x0_hat, scores)."""
    x0, scores = step_scores(x, logits, eligible, cfg, generator, mask_id, penalty)
    best = torch.zeros_like(eligible).scatter_(1, scores.topk(1, dim=-1).indices, True)
    chosen = eligible & ((scores >= cfg.threshold) | best)
    x.copy_(torch.where(chosen, x0, x))
    return x0, scores


def make_cache(cfg: SamplerConfig, model, x, positions, cota, given, holes, observe: bool, per_step: int):
    """The cache `cfg.cache` names (cache.py); CoTA supplies the attention bias, the layers CTEV
    reads and CTAR's policy (`per_step`: the most tokens one step commits). given, holes: (B, L - N)
    and (B, N) canvas columns, each in order."""
    if cfg.cache != "feature":
        return CACHES[cfg.cache](model, x, positions, cota.bias, cota.hidden_layers, observe)
    policy = StaleFirst(x, holes, model.cfg.n_layer) if cfg.cache_stale_first else LeastSimilar()
    return FeatureCache(model, x, positions, cota.bias, given, holes, cfg.cache_kp, cfg.cache_kr,
                        cfg.cache_rho, cota.refresh_policy(policy, x, holes, per_step), cfg.cache_fresh_values,
                        cota.hidden_layers, observe, per_block=cfg.threshold is not None)


@torch.no_grad()
def generate(model, prompts, mask_id: int, pad_id: int, cfg: SamplerConfig, seed: int = 0,
             on_step=None, stats=None, observe=False):
    """Continue a batch of prompts (lists of ids) by cfg.gen_length tokens: `infill` with one hole
    at the end. Returns the responses, (B, gen_length) ids."""
    if any(mask_id in p for p in prompts):
        raise ValueError("a prompt contains [MASK]: to fill holes inside the text, use infill")
    canvases = [list(p) + [mask_id] * cfg.gen_length for p in prompts]
    return infill(model, canvases, mask_id, pad_id, cfg, seed, on_step, stats, observe)[:, -cfg.gen_length:]


@torch.no_grad()
def infill(model, canvases, mask_id: int, pad_id: int, cfg: SamplerConfig, seed: int = 0,
           on_step=None, stats=None, observe=False):
    """Fill the [MASK]s (`mask_id`) of a batch of canvases (lists of ids), every row with the same
    number N of them (N replaces cfg.gen_length). Returns the filled canvases, LEFT-padded to
    (B, longest): row r's text is out[r, -len(canvases[r]):]. `model` may be torch.compile'd (the
    feature cache runs blocks one by one, so not compiled).
    on_step(step, x, cache), after every step, is for displays and probes, and is the only place
    that may sync with the host; observe=True makes the cache keep what they read (cache.py), and
    changes no token. stats, if a dict, receives the rows computed per layer and the steps."""
    if getattr(model, "cfg", None) is not None and model.cfg.causal:  # (a stand-in module may have no cfg)
        raise ValueError("an autoregressive model decodes left to right: use autoregressive.ar_generate")
    device = next(model.parameters()).device
    counts = sorted({sum(t == mask_id for t in c) for c in canvases})
    if len(counts) > 1:
        raise ValueError(f"every canvas of a batch needs the same number of [MASK]s, got {counts}")
    N = counts[0]
    cfg = replace(cfg, gen_length=N)
    cfg.validate(max(len(c) for c in canvases) - N, model.cfg.max_seq_len)
    generator = torch.Generator(device=device).manual_seed(seed)
    x, n_pad = pad_prompts(canvases, pad_id, device)
    B, L = x.shape
    is_hole = x == mask_id
    order = is_hole.int().argsort(dim=1, stable=True)  # given columns, then holes, each in order
    given, holes = order[:, :L - N], order[:, L - N:]  # (B, L - N), (B, N)
    bl = cfg.block_length
    block_of = torch.where(is_hole, (is_hole.cumsum(1) - 1) // bl, -1)  # each hole's block
    firsts, lasts = holes[:, ::bl], holes[:, bl - 1::bl] + 1  # (B, blocks): each row's block spans
    spans = list(zip(firsts.min(0).values.tolist(), lasts.max(0).values.tolist()))  # over all rows
    same = bool((firsts == firsts[:1]).all() and (lasts == lasts[:1]).all())
    positions = torch.arange(L, device=device) - n_pad[:, None]
    pad = padding_bias(n_pad, L) if bool((n_pad > 0).any()) else None
    real = torch.arange(L, device=device)[None] >= n_pad[:, None] if pad is not None else None
    cota = CoTA(cfg.cota, model, pad, is_hole, mask_id, real)
    schedule = transfer_schedule(bl, cfg.steps // len(spans))  # tokens committed at each step of a block
    fixed = cfg.threshold is None
    cache = make_cache(cfg, model, x, positions, cota, given, holes, observe,
                       per_step=schedule[0] if fixed else bl)
    step = 0
    for b, (lo, hi) in enumerate(spans):
        row_spans = None if same else (firsts[:, b:b + 1], lasts[:, b:b + 1])
        in_block = block_of[:, lo:hi] == b
        for j in range(len(schedule)) if fixed else itertools.count():
            logits = cache.logits(x, lo, hi, j == 0, row_spans)
            penalty = cota.penalty(x, cache.hidden, lo, hi)
            span = x[:, lo:hi]  # a view: commit writes through it into x
            if fixed:
                commit(span, logits, (span == mask_id) & in_block, schedule[j], cfg, generator, mask_id, penalty)
            else:
                commit_confident(span, logits, (span == mask_id) & in_block, cfg, generator, mask_id, penalty)
            step += 1
            if on_step is not None:
                on_step(step, x, cache)
            if not fixed and not bool(((span == mask_id) & in_block).any()):  # the one host sync
                break  # every row's block is full
    if stats is not None:
        stats.update(rows_per_layer=cache.rows_computed, steps=step)
    return x
