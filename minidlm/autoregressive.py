"""Left-to-right decoding for the autoregressive baseline (train_tiny.py --objective ar).

The causal model (model.py, `causal=True`) predicts each token from the ones before it, so
decoding is GPT's loop: predict the next token, append it, repeat. `ar_generate_uncached` is that
loop plainly, recomputing every position at every step. `ar_generate` keeps every layer's keys and
values in the K/V store (kv.py) and runs only the new rows: the prompt once (the prefill), then
one row per token, attending over the keys written so far. A test checks that the two give the
same tokens, greedy and sampled. An earlier token's K/V never change (it cannot see later ones),
so this cache is exact, where the diffusion caches (cache.py) approximate.

Batches are left-padded as in the diffusion sampler (each row's positions start at 0, pad keys
hidden), and tokens are chosen as there (`sampler.choose_tokens`: argmax, or the argmax of
logits / T plus Gumbel noise), never [MASK]. Every row decodes `gen_length` tokens (cut at
end-of-text afterwards), so the loop never syncs with the host. on_step(step, canvas, cache)
sees the prompt, the tokens so far and [MASK] in the places still to come: `--show` and `--save`
draw one token per frame.
"""
import torch
import torch.nn.functional as F

from .data import pad_prompts
from .kv import KVBuffer
from .sampler import choose_tokens


def pad_bias(n_pad, total_len: int, dtype=torch.float32):
    """(B, 1, L, L) additive bias: -inf on pad keys for every content row. A pad row sees the pads
    up to it (so its softmax is over something; no content row reads it)."""
    cols = torch.arange(total_len, device=n_pad.device)
    is_pad = cols < n_pad[:, None]  # (B, L)
    hide = is_pad[:, None, :] & ~is_pad[:, :, None]  # (B, query, key)
    return torch.zeros(hide.shape, dtype=dtype, device=n_pad.device).masked_fill(hide, float("-inf"))[:, None]


def check(model, longest_prompt: int, gen_length: int):
    if not model.cfg.causal:
        raise ValueError("left-to-right decoding needs an autoregressive model (trained with --objective ar)")
    if gen_length < 1 or longest_prompt < 1:
        raise ValueError("gen length and every prompt need at least one token")
    if longest_prompt + gen_length > model.cfg.max_seq_len:
        raise ValueError(f"prompt ({longest_prompt} tokens) + gen length ({gen_length}) exceeds the "
                         f"model's context of {model.cfg.max_seq_len} tokens")


@torch.no_grad()
def ar_generate_uncached(model, prompts, mask_id: int, pad_id: int, gen_length: int, temperature=0.0, seed=0,
                         on_step=None, stats=None):
    """The plain loop: run the whole sequence, take the last row's prediction, append it.
    prompts: lists of ids. Returns the (B, gen_length) continuations. on_step, stats: as `ar_generate`."""
    check(model, max(map(len, prompts)), gen_length)
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    x, n_pad = pad_prompts(prompts, pad_id, device)
    P = x.shape[1]
    for step in range(gen_length):
        L = x.shape[1]
        positions = torch.arange(L, device=device) - n_pad[:, None]
        logits = model(x, positions, attn_bias=pad_bias(n_pad, L))[:, -1]  # the next token's
        logits[:, mask_id] = float("-inf")
        x = torch.cat([x, choose_tokens(logits, temperature, generator)[:, None]], dim=1)
        if on_step is not None:  # the canvas as ar_generate shows it: [MASK] where tokens will come
            on_step(step + 1, F.pad(x, (0, gen_length - step - 1), value=mask_id), None)
    if stats is not None:
        stats.update(rows_per_layer=[len(prompts) * sum(range(P, P + gen_length))] * model.cfg.n_layer,
                     steps=gen_length)
    return x[:, -gen_length:]


@torch.no_grad()
def ar_generate(model, prompts, mask_id: int, pad_id: int, gen_length: int, temperature=0.0, seed=0,
                on_step=None, stats=None):
    """The same tokens as `ar_generate_uncached`, with a K/V cache: each step runs one new row.
    stats, if a dict, receives the rows computed per layer (over the batch) and the steps."""
    check(model, max(map(len, prompts)), gen_length)
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    generator = torch.Generator(device=device).manual_seed(seed)
    prompt, n_pad = pad_prompts(prompts, pad_id, device)
    B, P = prompt.shape
    L = P + gen_length
    canvas = torch.cat([prompt, torch.full((B, gen_length), mask_id, dtype=prompt.dtype, device=device)], dim=1)
    positions = torch.arange(L, device=device) - n_pad[:, None]
    bias = pad_bias(n_pad, L) if len(set(map(len, prompts))) > 1 else None
    kv = KVBuffer(model, B, L, dtype, device)
    lo = 0
    for step in range(gen_length):
        hi = P + step  # rows lo..hi-1 are new: the prompt at the first step, then the last token
        logits = model(canvas[:, lo:hi], positions[:, lo:hi], kv.writer(span=(lo, hi), upto_span=True),
                       attn_bias=None if bias is None else bias[:, :, lo:hi, :hi])[:, -1]
        logits[:, mask_id] = float("-inf")
        canvas[:, hi] = choose_tokens(logits, temperature, generator)
        lo = hi
        if on_step is not None:
            on_step(step + 1, canvas, kv)
    if stats is not None:
        stats.update(rows_per_layer=[B * (L - 1)] * model.cfg.n_layer, steps=gen_length)
    return canvas[:, P:]
