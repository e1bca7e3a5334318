"""Benchmarks: the sampler's caches, and (--train) training throughput against the hardware.

    python bench.py            # batch 1 and 8, prompt 32 + 128 generated tokens, 1 token/step, block 32
    python bench.py --quick    # the same at 64 generated tokens, one timed run: under a minute
    python bench.py --train    # training steps of the default train_tiny.py model and recipe
    python bench.py --profile dual --threads 1   # where a dual-cache step spends its time (torch.profiler)
    python bench.py --compile --threads 1        # torch.compile against eager, fixed and threshold rule

--train prints tokens/s, the FLOPs per token counted from the model config (forward + backward =
3 x forward; forward = 2 x every weight matrix's size + 4 x T x d per layer for the bidirectional
attention scores and their weighted sum), the achieved GFLOP/s, and the matmul peak it measures
on the same machine in the same run (a large square matmul of the same dtype), with their ratio:
a row in float32, and a row under bf16 autocast where the device multiplies bf16 natively (CUDA,
or a CPU with AVX512-BF16 or AMX), which train_tiny.py then uses by default.

Rows: `uncached` (our sampler), `plain-loop` (`sampler.llada_generate`, the plain LLaDA loop a
student reads first: full forward each step, no padding, no cache), then the prefix, dual and feature caches. For each: tokens/s, speed-up over
uncached, the IDEAL speed-up = (rows the uncached sampler computes) / (rows this one computes),
summed over layers, and achieved / ideal. The ideal ignores what a cache adds (the feature
cache's V projection of every response row for its similarity test, gathers and scatters), so
achieved / ideal says how much of the saved work turned into saved time. `agree` is the share
of generated tokens equal to the uncached sampler's.
"""
from minidlm.cli import quiet_early_ctrl_c

quiet_early_ctrl_c(__name__)  # before the heavy imports: a Ctrl-C while torch loads is one line

import json
import time

import torch

from minidlm.checkpoint import CheckpointError, load_model
from minidlm.cli import (ArgumentParser, die, number, device_or_die, positive_int, run_main,
                         synchronize, timed)
from minidlm.files import preflight, write_json
from minidlm.data import load_documents
from minidlm.evaluate import context_problem
from minidlm.sampler import SamplerConfig, generate, llada_generate


def best_of(fn, device, repeats):
    """fn's output and its fastest time (cli.timed) over `repeats` calls."""
    best = float("inf")
    for _ in range(repeats):
        out, seconds = timed(device, fn)
        best = min(best, seconds)
    return out, best


def flops_per_token(cfg, seq_len: int) -> int:
    """Training FLOPs per token of a ModelConfig: 3 x forward (the backward costs two forwards)."""
    d, f = cfg.d_model, cfg.mlp_ratio * cfg.d_model
    per_layer = 2 * (4 * d * d + 2 * d * f) + 2 * 2 * (seq_len + int(cfg.sink)) * d
    return 3 * (cfg.n_layer * per_layer + 2 * d * cfg.vocab_size)


def matmul_peak_gflops(device, n=1024, seconds=2.0, dtype=torch.float32):
    """GFLOP/s of repeated n x n matmuls in `dtype`: the most this machine's BLAS gives the model."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n ** 3 / timed_loop(lambda: a @ b, device, seconds) / 1e9


def timed_loop(fn, device, seconds):
    """Seconds per call of fn, after one warm-up call, over about `seconds` of calls."""
    fn()
    synchronize(device)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or calls < 3:
        fn()
        calls += 1
    synchronize(device)
    return (time.perf_counter() - start) / calls


def train_benchmark(device, seconds: float, json_path=None):
    """Optimizer steps of the default train_tiny.py run on random tokens: in float32, and under
    bf16 autocast where the device multiplies bf16 natively (train_tiny.py's default there), each
    against the matmul peak of its own dtype."""
    from minidlm.model import DiffusionLM, ModelConfig
    from minidlm.optim import build_optimizers
    from minidlm.train import TrainConfig, bf16_autocast, native_bf16, train_step

    cfg, args = ModelConfig(), TrainConfig()  # train_tiny.py's default model and recipe
    seq_len = cfg.max_seq_len
    tokens, flops = args.batch_size * seq_len, flops_per_token(cfg, seq_len)
    modes = {"float32": (None, torch.float32)}
    if native_bf16(device):
        modes["bf16 autocast (default here)"] = (bf16_autocast(device), torch.bfloat16)
    rows = []
    for name, (autocast, dtype) in modes.items():
        torch.manual_seed(0)
        model = DiffusionLM(cfg).to(device).train()
        opts = build_optimizers(model, args.optimizer, args.lr, args.muon_lr, args.weight_decay)
        g = torch.Generator(device=device).manual_seed(0)
        mask_id = cfg.vocab_size - 1
        x0 = torch.randint(0, mask_id, (args.batch_size, seq_len), device=device)
        step = lambda: train_step(model, opts, x0, mask_id, g, args, autocast=autocast)
        per_step = timed_loop(step, device, seconds)
        achieved, peak = tokens * flops / per_step / 1e9, matmul_peak_gflops(device, dtype=dtype)
        rows.append({"arithmetic": name, "tokens_per_s": tokens / per_step, "flops_per_token": flops,
                     "achieved_gflops": achieved, "peak_gflops": peak})
    print(f"device {device.type}, threads {torch.get_num_threads()}, default train_tiny.py model "
          f"({model.num_params():,} parameters), batch {args.batch_size} x {seq_len}, {args.optimizer}")
    print("| arithmetic | tokens/s | FLOPs/token | achieved GFLOP/s | matmul peak GFLOP/s (same dtype) | achieved/peak |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['arithmetic']} | {r['tokens_per_s']:,.0f} | {r['flops_per_token'] / 1e6:.1f} M | "
              f"{r['achieved_gflops']:.1f} | {r['peak_gflops']:.1f} | {r['achieved_gflops'] / r['peak_gflops']:.0%} |")
    if json_path:
        write_json(json_path, rows)


def profile_steps(model, tok, stories, device, cache: str, batch: int, gen_length: int, top: int = 12):
    """torch.profiler over one generate call of `cache` (after a warm-up): the operators that take
    the most time per denoising step, and how many operator calls a step makes."""
    from torch.profiler import ProfilerActivity, profile
    cfg, stats = SamplerConfig(gen_length=gen_length, steps=gen_length, block_length=32, cache=cache), {}
    run = lambda: generate(model, stories[:batch], tok.mask_id, tok.eot_id, cfg, stats=stats)
    run()
    _, wall = best_of(run, device, 2)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        run()
        synchronize(device)
    steps = stats["steps"]
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    total = sum(e.self_cpu_time_total for e in events)
    calls = sum(e.count for e in events)
    print(f"\ncache {cache}, batch {batch}: {1e3 * wall / steps:.2f} ms per step (best of 2, no profiler); "
          f"under the profiler {total / steps / 1e3:.2f} ms of aten self time and {calls / steps:.0f} aten "
          f"calls per step (mean over the {steps} steps of one call)")
    print("| operator | calls/step | ms/step | share |")
    print("|---|---|---|---|")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]:
        print(f"| {e.key} | {e.count / steps:.0f} | {e.self_cpu_time_total / steps / 1e3:.3f} | "
              f"{e.self_cpu_time_total / total:.0%} |")


def compile_benchmark(model, prompts_of, mask_id, pad_id, device, prompt_length, gen_length, repeats, threshold):
    """Eager against torch.compile(model, dynamic=True) (sample.py --compile) for the none, prefix
    and dual samplers, under the fixed rule and the threshold rule: warm tokens/s of each, the
    seconds the first compiled call took (compiling included), and how many graphs the compiler
    built for that sampler (a new shape it cannot cover symbolically is a new graph)."""
    import torch._dynamo
    from torch._dynamo.utils import counters
    header = (f"device {device.type}, threads {torch.get_num_threads()}, prompt {prompt_length} + {gen_length} "
              f"generated, block 32, greedy; warm best of {repeats}; compiled = torch.compile(model, dynamic=True)")
    print(header + "\n" + COMPILE_HEAD, flush=True)
    table = []
    for B in prompts_of:
        prompts = prompts_of[B]
        for cache in ["none", "prefix", "dual"]:
            for rule, th in [("fixed", None), (f"P = {threshold}", threshold)]:
                cfg = SamplerConfig(gen_length=gen_length, steps=gen_length, block_length=32, cache=cache,
                                    threshold=th)
                torch._dynamo.reset()
                counters.clear()
                compiled = torch.compile(model, dynamic=True)
                eager = lambda: generate(model, prompts, mask_id, pad_id, cfg)
                fast = lambda: generate(compiled, prompts, mask_id, pad_id, cfg)
                eager()
                out_e, t_e = best_of(eager, device, repeats)
                _, first = timed(device, fast)
                out_c, t_c = best_of(fast, device, repeats)
                graphs = int(counters["stats"]["unique_graphs"])
                row = {"batch": B, "sampler": cache, "rule": rule, "eager_tok_s": B * gen_length / t_e,
                       "compiled_tok_s": B * gen_length / t_c, "ratio": t_e / t_c, "first_call_s": first,
                       "graphs": graphs, "same_tokens": bool((out_e == out_c).all())}
                table.append(row)
                print(compile_line(row, table), flush=True)
    torch._dynamo.reset()
    return {"header": header, "rows": table}


COMPILE_HEAD = ("| batch | sampler | rule | eager tok/s | compiled tok/s | compiled / eager | compiled / eager default "
                "| first compiled call s | graphs | same tokens |\n|---|---|---|---|---|---|---|---|---|---|")


def compile_line(row, rows) -> str:
    """One row of the --compile table; `compiled / eager default` is over the eager uncached
    fixed-schedule sampler (plain `python sample.py`) at the same batch size, in the same run."""
    default = next(r for r in rows if r["batch"] == row["batch"] and r["sampler"] == "none" and r["rule"] == "fixed")
    return (f"| {row['batch']} | {row['sampler']} | {row['rule']} | {row['eager_tok_s']:,.0f} | "
            f"{row['compiled_tok_s']:,.0f} | {row['ratio']:.2f}x | {row['compiled_tok_s'] / default['eager_tok_s']:.2f}x | "
            f"{row['first_call_s']:.1f} | {row['graphs']} | {'yes' if row['same_tokens'] else 'NO'} |")


def build_parser():
    p = ArgumentParser(description="Benchmark the sampler's caches or training (prints ratios, not a test).")
    p.add_argument("--checkpoint", default="checkpoints/tiny.pt")
    p.add_argument("--device", default="auto")
    p.add_argument("--quick", action="store_true", help="64 generated tokens, one timed run (unless --repeats)")
    p.add_argument("--batch-sizes", type=number(int, 1, 4096), nargs="+", default=[1, 8])
    p.add_argument("--prompt-length", type=positive_int, default=32)
    p.add_argument("--repeats", type=number(int, 1, 1000), default=None,
                   help="timed runs per row, the best kept (default: 3; 1 with --quick)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the rows as JSON here")
    p.add_argument("--threads", type=number(int, 1, 1024), default=None,
                   help="torch CPU threads (default: torch's; pass 1 on a shared machine)")
    p.add_argument("--train", action="store_true", help="benchmark training steps instead of sampling")
    p.add_argument("--profile", default=None, choices=["none", "prefix", "dual", "feature"],
                   help="instead: torch.profiler's operators per step of this cache, at each --batch-sizes")
    p.add_argument("--compile", action="store_true",
                   help="instead: torch.compile against eager for none/prefix/dual, fixed and threshold rule")
    p.add_argument("--from-json", default=None, metavar="PATH",
                   help="with --compile: print the table saved with --json instead of measuring")
    p.add_argument("--threshold", type=number(float, 0, 1, lo_open=True), default=None,
                   help="with --compile: the threshold rule's P (default 0.9)")
    p.add_argument("--seconds", type=number(float, 0.1, 3600), default=10.0, help="--train: seconds of timed steps")
    return p


def main():
    args = build_parser().parse_args()
    modes = [flag for flag, on in [("--train", args.train), ("--profile", args.profile), ("--compile", args.compile)] if on]
    if len(modes) > 1:
        die(f"{' and '.join(modes)} are separate benchmarks: run one at a time")
    if args.from_json and not args.compile:
        die("--from-json reprints a --compile table: add --compile")
    if args.from_json:
        preflight(inputs={"--from-json": args.from_json})
        try:
            with open(args.from_json) as f:
                saved = json.load(f)
            lines = [saved["header"], COMPILE_HEAD] + [compile_line(r, saved["rows"]) for r in saved["rows"]]
        except (OSError, ValueError, KeyError, TypeError, StopIteration):
            die(f"{args.from_json} is not a table written by bench.py --compile --json")
        return print("\n".join(lines))
    if args.threshold is not None and not args.compile:
        die("--threshold is --compile's threshold rule; the caches' table runs the fixed schedule "
            "(python -m studies.frontier measures thresholds)")
    preflight(outputs={"--json": args.json}, inputs={} if args.train else {"--checkpoint": args.checkpoint})
    device = device_or_die(args.device, args.threads)
    if args.train:
        return train_benchmark(device, args.seconds, args.json)
    try:
        model, tok, _ = load_model(args.checkpoint, device)
    except CheckpointError as e:
        die(str(e))
    gen_length = 64 if args.quick else 128
    repeats = args.repeats or (1 if args.quick else 3)
    problem = context_problem(args.checkpoint, model, args.prompt_length, gen_length, "the benchmark")
    if problem:
        die(problem)
    _, val_docs = load_documents(None)
    stories = [tok.prompt(d) for d in val_docs]
    stories = [s[: args.prompt_length] for s in stories if len(s) >= args.prompt_length]
    if len(stories) < max(args.batch_sizes):
        die(f"only {len(stories)} held-out stories have --prompt-length {args.prompt_length} tokens, and "
            f"--batch-sizes asks for {max(args.batch_sizes)} prompts: give a shorter --prompt-length")
    if args.profile:
        for B in args.batch_sizes:
            profile_steps(model, tok, stories, device, args.profile, B, gen_length)
        return
    if args.compile:
        table = compile_benchmark(model, {B: stories[:B] for B in args.batch_sizes}, tok.mask_id, tok.eot_id,
                                  device, args.prompt_length, gen_length, repeats, args.threshold or 0.9)
        if args.json:
            write_json(args.json, table)
        return
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
            out, seconds = best_of(run, device, repeats)
            results[name] = (out, seconds, sum(stats["rows_per_layer"]))
        ref_prompt = torch.tensor(prompts, device=device)
        ref = lambda: llada_generate(model, ref_prompt, tok.mask_id, gen_length, gen_length, 32)
        out, seconds = best_of(ref, device, repeats)
        results["plain-loop"] = (out, seconds, results["uncached"][2])
        base_out, base_s, base_rows = results["uncached"]
        for name in ["uncached", "plain-loop", *list(rows)[1:]]:
            out, seconds, n_rows = results[name]
            speedup, ideal = base_s / seconds, base_rows / n_rows
            agree = (out == base_out).float().mean().item()
            table.append({"batch": B, "sampler": name, "tok_s": B * gen_length / seconds,
                          "speedup": speedup, "ideal": ideal, "agree": agree})
            print(f"| {B} | {name} | {B * gen_length / seconds:,.0f} | {speedup:.2f}x | {ideal:.2f}x "
                  f"| {speedup / ideal:.2f} | {agree:.0%} |", flush=True)

    if args.json:
        write_json(args.json, table)


if __name__ == "__main__":
    run_main(main)
