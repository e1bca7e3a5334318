"""Sampler benchmark: tokens/s of every cache, next to the speed-up its counted work promises.

    python bench.py            # batch 1 and 8, prompt 32 + 128 generated tokens, 1 token/step, block 32
    python bench.py --quick    # the same at 64 generated tokens, one timed run: under a minute

Rows: `uncached` (our sampler), `llada-ref` (a plain re-implementation of LLaDA's `generate` loop:
full forward each step, float64 softmax, a per-row top-k with a tensor k, i.e. one host sync per
row per step), then the prefix, dual and feature caches. For each: tokens/s, speed-up over
uncached, the IDEAL speed-up = (rows the uncached sampler computes) / (rows this one computes),
summed over layers, and achieved / ideal. The ideal ignores what a cache adds (the feature
cache's V projection of every response row for its similarity test, gathers and scatters), so
achieved / ideal says how much of the saved work turned into saved time. `agree` is the share
of generated tokens equal to the uncached sampler's.
"""
import json
import os
import time

import torch
import torch.nn.functional as F

from minidlm.checkpoint import CheckpointError, load_model
from minidlm.cli import ArgumentParser, die, pick_device, positive_int
from minidlm.data import load_documents
from minidlm.sampler import SamplerConfig, generate


@torch.no_grad()
def llada_reference(model, prompt, mask_id, gen_length, steps, block_length):
    """LLaDA's generate loop as published (greedy, low-confidence remasking), written out plainly."""
    x = torch.full((prompt.shape[0], prompt.shape[1] + gen_length), mask_id, device=prompt.device)
    x[:, :prompt.shape[1]] = prompt
    num_blocks = gen_length // block_length
    for b in range(num_blocks):
        end = prompt.shape[1] + (b + 1) * block_length
        block_mask = x[:, end - block_length:end] == mask_id
        n = block_mask.sum(1, keepdim=True)  # a tensor k per row, as in LLaDA
        per_step = steps // num_blocks
        num_transfer = (n // per_step).repeat(1, per_step)
        num_transfer[:, : per_step] += torch.arange(per_step, device=x.device) < (n % per_step)
        for i in range(per_step):
            mask_index = x == mask_id
            logits = model(x)
            x0 = logits.argmax(-1)
            p = F.softmax(logits.double(), dim=-1).gather(-1, x0.unsqueeze(-1)).squeeze(-1)
            p[:, end:] = float("-inf")
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, p, torch.tensor(float("-inf"), device=x.device))
            transfer = torch.zeros_like(x0, dtype=torch.bool)
            for j in range(confidence.shape[0]):  # the per-row loop: a host sync per row
                _, select = torch.topk(confidence[j], k=int(num_transfer[j, i]))
                transfer[j, select] = True
            x[transfer] = x0[transfer]
    return x[:, prompt.shape[1]:]


def timed(fn, device, repeats):
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return out, best


def main():
    p = ArgumentParser(description="Benchmark the sampler's caches (prints ratios, not a test).")
    p.add_argument("--checkpoint", default="checkpoints/tiny.pt")
    p.add_argument("--device", default="auto")
    p.add_argument("--quick", action="store_true", help="64 generated tokens, one timed run")
    p.add_argument("--batch-sizes", type=positive_int, nargs="+", default=[1, 8])
    p.add_argument("--prompt-length", type=positive_int, default=32)
    p.add_argument("--repeats", type=positive_int, default=3, help="timed runs per row (best is kept)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the rows as JSON here")
    args = p.parse_args()
    try:
        device = pick_device(args.device)
        model, tok, _ = load_model(args.checkpoint, device)
    except (ValueError, CheckpointError) as e:
        die(str(e))
    gen_length = 64 if args.quick else 128
    repeats = 1 if args.quick else args.repeats
    _, val_docs = load_documents(None)
    stories = [[tok.eot_id] + tok.encode(d) for d in val_docs]
    stories = [s[: args.prompt_length] for s in stories if len(s) >= args.prompt_length]
    rows = {
        "uncached": dict(cache="none"),
        "prefix": dict(cache="prefix"),
        "dual": dict(cache="dual"),
        "feature K_r 7, rho 0.25": dict(cache="feature", cache_kr=7, cache_rho=0.25),
    }
    print(f"device {device.type}, threads {torch.get_num_threads()}, prompt {args.prompt_length} + "
          f"{gen_length} generated, 1 token/step, block 32, greedy; best of {repeats}")
    print("| batch | sampler | tok/s | speed-up | ideal | achieved/ideal | agree |")
    print("|---|---|---|---|---|---|---|")
    table = []
    for B in args.batch_sizes:
        prompts = stories[:B]
        base_cfg = dict(gen_length=gen_length, steps=gen_length, block_length=32)
        results = {}
        for name, extra in rows.items():
            cfg, stats = SamplerConfig(**base_cfg, **extra), {}
            run = lambda: generate(model, prompts, tok.mask_id, tok.eot_id, cfg, stats=stats)
            run()  # warm-up (allocator, caches of the BLAS)
            out, seconds = timed(run, device, repeats)
            results[name] = (out, seconds, sum(stats["rows_per_layer"]))
        ref_prompt = torch.tensor(prompts, device=device)
        ref = lambda: llada_reference(model, ref_prompt, tok.mask_id, gen_length, gen_length, 32)
        out, seconds = timed(ref, device, repeats)
        results["llada-ref"] = (out, seconds, results["uncached"][2])
        base_out, base_s, base_rows = results["uncached"]
        for name in ["uncached", "llada-ref", *list(rows)[1:]]:
            out, seconds, n_rows = results[name]
            speedup, ideal = base_s / seconds, base_rows / n_rows
            agree = (out == base_out).float().mean().item()
            table.append({"batch": B, "sampler": name, "tok_s": B * gen_length / seconds,
                          "speedup": speedup, "ideal": ideal, "agree": agree})
            print(f"| {B} | {name} | {B * gen_length / seconds:,.0f} | {speedup:.2f}x | {ideal:.2f}x "
                  f"| {speedup / ideal:.2f} | {agree:.0%} |", flush=True)

    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(table, f, indent=1)


if __name__ == "__main__":
    main()
