# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # minidlm: the workshop in one notebook
#
# How a masked-diffusion language model (LLaDA-style) writes text, in seven steps, on a laptop CPU
# in under ten minutes. Run the cells from top to bottom; each section ends with one exercise.
#
# 1. the forward process and the objective
# 2. training a model for a few minutes
# 3. sampling: the reverse process
# 4. caches: making each step cheaper
# 5. the Repeat Curse and CoTA
# 6. attention sinks
# 7. infilling
#
# This file is `docs/workshop.py` (Jupytext percent format) paired with `docs/workshop.ipynb`;
# after editing the `.py`, run `jupytext --update --to ipynb docs/workshop.py` (`--update` keeps the
# cell ids, so the diff stays small; commit the `.ipynb` without outputs). Every cell calls the
# `minidlm` package; read the functions it names in `minidlm/`.

# %% [markdown]
# First, work from the repository root (the folder with `pyproject.toml`), wherever Jupyter started,
# so that every path below (`checkpoints/tiny.pt`, `runs/`, `docs/`) is relative to it.

# %%
import os
import sys
from pathlib import Path

ROOT = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "pyproject.toml").exists())
os.chdir(ROOT)
sys.path.insert(0, str(ROOT))
print("working in", ROOT)

# %% [markdown]
# The parameters. `TRAIN_MINUTES` is the training budget of section 2 (2.5 minutes in class);
# the environment variables let a test run the whole notebook quickly.

# %% tags=["parameters"]
TRAIN_MINUTES = float(os.environ.get("WORKSHOP_TRAIN_MINUTES", 2.5))
FAST = os.environ.get("WORKSHOP_FAST", "0") == "1"  # a quick check: fewer prompts, shorter answers
THREADS = int(os.environ.get("WORKSHOP_THREADS", 1))  # the model is tiny: one thread is as fast, and never fights other programs
RUN_DIR = os.environ.get("WORKSHOP_RUN_DIR", "runs")  # where this notebook writes its model and GIFs
N_PROMPTS = 8 if FAST else 32  # held-out prompts for the Repeat Curse (section 5)
GEN = 32 if FAST else 64  # tokens generated per answer
CHECKPOINT = f"{RUN_DIR}/workshop.pt"

# %%
import inspect
import math

import matplotlib.pyplot as plt
import torch
from IPython.display import Image, Markdown, display

from minidlm.animation import FrameRecorder, save_gif
from minidlm.checkpoint import load_model
from minidlm.cota import CoTAConfig
from minidlm.data import fixed_windows, load_documents, token_stream
from minidlm.diffusion import evaluate_nelbo, forward_process, nelbo_loss
from minidlm.evaluate import continuation_text, held_out_prompts, unigram_entropy_bits
from minidlm.sampler import SamplerConfig, generate, llada_generate
from minidlm.workshop import (decode_each, fill, markdown_table, masked_view, nelbo_by_t,
                              plot_nelbo_by_t, plot_training, sink_probe)

torch.set_num_threads(THREADS)
shipped, tok, shipped_meta = load_model("checkpoints/tiny.pt")  # trained for 51 minutes (README)
train_docs, val_docs = load_documents(None)  # the embedded tiny-stories corpus, split 40,000 / 1,000
print(f"checkpoints/tiny.pt: {shipped.num_params():,} parameters, vocabulary {tok.vocab_size}")

# %% [markdown]
# ## 1. The forward process and the objective
#
# **Forward process** (`minidlm/diffusion.py`, `forward_process`): pick a noise level t, set
# p = (1 - eps) t + eps, and replace every token by [MASK] **independently** with probability p.
# At t = 0 the text is clean; at t = 1 it is all [MASK]. Below, one validation sentence at
# three noise levels (each ░ is one masked token; BPE tokens are words or pieces of words).

# %%
sentence = val_docs[0].split(". ")[0] + "."
x0 = torch.tensor([tok.encode(sentence)])
g = torch.Generator().manual_seed(0)
print(f"t = 0.0: {sentence}")
for t in (0.2, 0.5, 0.9):
    xt, masked, p = forward_process(x0, tok.mask_id, g, t_min=t, t_max=t)
    print(f"t = {t}: {masked_view(tok, xt[0])}    ({masked.sum().item()} of {x0.numel()} tokens masked)")

# %% [markdown]
# **Objective** (`nelbo_loss`): the network sees x_t and predicts every position at once. Only
# masked positions count, each weighted by 1/p:
#
# NELBO = E_t [ 1/(BL) sum over masked i of -log p_theta(x0_i | x_t) / p ]   (LLaDA Eq. 3),
#
# an upper bound on the negative log-likelihood. We report it in **bits per token** and compare it
# with the entropy of the word frequencies: a model that knew only how common each token is (and
# nothing about context) would score that.
#
# The figure shows the inside of the bound for the shipped model on 32 validation windows: at each
# t, how many bits a masked token costs (`nelbo_by_t`). With little masked (left), the context
# almost gives the answer away; with everything masked (right), the model falls back towards word
# frequencies. The NELBO is the mean of this curve over t; `evaluate_nelbo` estimates it with
# less noise (LLaDA Eq. 6).

# %%
windows = fixed_windows(token_stream(tok, val_docs), 256, 32)  # 32 validation windows of 256 tokens
unigram = unigram_entropy_bits(windows, tok.vocab_size)
ts = [0.05 + 0.1 * i for i in range(10)]
bits = nelbo_by_t(shipped, windows, tok.mask_id, ts)
with torch.no_grad():  # one draw of the objective: one t per window, stratified over the 32
    one_draw = nelbo_loss(shipped, windows, tok.mask_id, torch.Generator().manual_seed(0)).item() / math.log(2)
nats, se = evaluate_nelbo(shipped, windows, tok.mask_id, n_mc=4)  # 4 draws per window, Eq. 6
nelbo = nats / math.log(2)
print(f"nelbo_loss, one draw: {one_draw:.2f} bits/token; evaluate_nelbo: {nelbo:.2f} +- {se / math.log(2):.2f} "
      f"bits/token; word frequencies alone: {unigram:.2f} bits/token")

fig, ax = plt.subplots(figsize=(7, 4))
plot_nelbo_by_t(ax, ts, bits, nelbo, unigram)
ax.set_title("The objective inside out: the cost of a masked token at each noise level t\n(checkpoints/tiny.pt, 32 validation windows)")
ax.legend(fontsize=8, loc="center left")
plt.show()

# %% [markdown]
# **Exercise 1.** Rerun the forward-process cell (the one with t = 0.2, 0.5, 0.9) with other
# seeds (`manual_seed(1)`, `2`, ...). How many tokens are masked at t = 0.5 on average, and how
# far from it does one draw land? Then: why does the curve at t = 0.95 stay well below the
# word-frequency line? (What does the model still see when 95 % of the text is masked?)

# %% [markdown]
# ## 2. Train a model (about 3 minutes)
#
# `train_tiny.py` trains the default recipe (8 layers, d = 128, 1.8 M parameters; Muon + AdamW,
# t ~ U[0.15, 0.85]) on the clock: `--minutes` stops it when the time is up, and the learning
# rate schedule runs on that clock. It validates every 100 steps, then evaluates the final model
# and saves it. While it runs, read `train_step` in `minidlm/train.py`: one step is
# `forward_process` + the masked cross-entropy of section 1, then the optimizers.

# %%
# !{sys.executable} train_tiny.py --minutes {TRAIN_MINUTES} --out {CHECKPOINT} --force --threads {THREADS}
assert _exit_code == 0, "training failed: read the lines above"  # noqa: F821 (set by the ! line)

# %% [markdown]
# The loss curve, read from the checkpoint's saved meta (`meta["losses"]`, one per step;
# `meta["evals"]`, the validation NELBO; `meta["unigram_bits_per_token"]`). Left: your run; right:
# the shipped model, the same recipe for 2,400 steps (51 minutes). The faint line is the loss of
# each step, the bold one its running mean; the dots are the true NELBO on validation text. The
# training loss leaves out t < 0.15 and t > 0.85, so it is not the NELBO: compare the dots with the
# dashed word-frequency line. A model that has not gone clearly below it has learned nothing from
# context yet.

# %%
model, _, meta = load_model(CHECKPOINT)
fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
plot_training(axes[0], meta, "your model", color="C0")
plot_training(axes[1], shipped_meta, "tiny.pt", color="C2")
axes[0].set_title(f"Your model: {meta['step']} steps in {meta['metrics']['train_minutes']:.1f} minutes")
axes[1].set_title("checkpoints/tiny.pt: 2,400 steps in 51 minutes")
for ax in axes:
    ax.legend(fontsize=7)
plt.show()
print(f"your model: {meta['metrics']['val_bits_per_token']:.2f} bits/token, "
      f"{meta['metrics'].get('grammatical_rate', 0):.0%} grammatical sentences; "
      f"tiny.pt: {shipped_meta['metrics']['val_bits_per_token']:.2f} bits/token, "
      f"{shipped_meta['metrics']['grammatical_rate']:.0%}")

# %% [markdown]
# **Exercise 2** (README exercise 4, at home: it takes longer). Train on your own text and ask
# whether the Repeat Curse of section 5 appears there too:
# `python train_tiny.py --data my_text.txt --out runs/mine.pt`, then
# `python -m studies.repeat_study --checkpoint runs/mine.pt --data my_text.txt --quick`.

# %% [markdown]
# ## 3. Sampling: the reverse process
#
# Start from the prompt and a row of [MASK]s. At every step the model predicts all masked
# positions at once; keep the prediction it is surest of and leave the rest masked (low-confidence
# remasking); a committed token never changes. Here is the whole method, `llada_generate`, the
# first function of `minidlm/sampler.py`:

# %%
print(inspect.getsource(llada_generate))

# %% [markdown]
# The package's sampler (`generate`, built on `infill`) adds batching, holes, temperature, caches
# and CoTA, and gives exactly the same tokens as this loop (tested; checked here on your model):

# %%
prompt_text = "Once upon a time, there was a girl named Mia."
prompt = tok.prompt(prompt_text)
plain = llada_generate(model, torch.tensor([prompt]), tok.mask_id, gen_length=GEN, steps=GEN, block_length=32)
package = generate(model, [prompt], tok.mask_id, tok.eot_id, SamplerConfig(gen_length=GEN, steps=GEN, block_length=32))
print("same tokens:", torch.equal(plain, package))
print(prompt_text + continuation_text(tok, package[0]))

# %% [markdown]
# Watch it: a `FrameRecorder` (`minidlm/animation.py`) is an `on_step` hook that keeps the canvas
# after every step, and `save_gif` draws the frames. Grey boxes are [MASK]s, green the token
# committed at that step, ¶ the end of a story. First your model, then the shipped one. Which
# positions are filled first?

# %%
for name, m in [("workshop", model), ("tiny", shipped)]:
    recorder = FrameRecorder(len(prompt))
    generate(m, [prompt], tok.mask_id, tok.eot_id, SamplerConfig(gen_length=GEN, steps=GEN, block_length=32), on_step=recorder)
    display(Markdown(f"**{name}** ({len(recorder.frames)} steps, one token each)"))
    display(Image(filename=save_gif(f"{RUN_DIR}/{name}.gif", recorder.frames, tok, prompt=prompt_text, frame_ms=120)))

# %% [markdown]
# **Exercise 3** (README exercise 2). Decode with `SamplerConfig(..., remasking="random")`, or
# `python sample.py --show --remasking random`, against the default. Which positions get filled
# first, and why does low-confidence decoding fill punctuation and end-of-story marks early?

# %% [markdown]
# ## 4. Caches: making each step cheaper
#
# Every step recomputes every position through every layer, although most of them barely change.
# The caches (`minidlm/cache.py`) reuse work across steps: **prefix** keeps the prompt's keys and
# values for a block (Fast-dLLM), **dual** also the text after the current block, **feature**
# (dLLM-Cache) keeps every row's features and refreshes the prompt every K_p = 25 steps, the
# answer every K_r = 7 steps and a quarter of it (rho = 0.25) in between.
#
# On the shipped model, 8 held-out prompts, 64 tokens in 2 blocks of 32, one token per step:
# `rows` is the rows computed per layer (the `stats` dict of `generate`), `ideal` the speed-up
# that saving them would give, `speed-up` the measured one (tokens/s; on a busy laptop rerun the
# cell: times move), `same tokens` the share of tokens equal to the uncached decode. The last row
# refreshes the feature cache at every step (K_p = K_r = 1): it must give exactly the uncached
# tokens.

# %%
cache_prompts = held_out_prompts(val_docs, 8)
blocks = dict(gen_length=GEN, steps=GEN, block_length=32)
caches = {c: SamplerConfig(**blocks, cache=c) for c in ["none", "prefix", "dual", "feature"]}
caches["feature, K_p = K_r = 1"] = SamplerConfig(**blocks, cache="feature", cache_kp=1, cache_kr=1)
rows = decode_each(shipped, tok, cache_prompts, caches)
none = rows[0]
display(Markdown(markdown_table(rows, {
    "cache": lambda r: r["label"], "rows per layer": lambda r: f"{r['rows']:,.0f}",
    "ideal": lambda r: f"{none['rows'] / r['rows']:.2f}x", "tokens/s": lambda r: f"{r['tokens_per_s']:.0f}",
    "speed-up": lambda r: f"{r['tokens_per_s'] / none['tokens_per_s']:.2f}x",
    "same tokens": lambda r: f"{r['same']:.0%}"})))
assert torch.equal(rows[-1]["out"], none["out"]), "a feature cache refreshed at every step must equal no cache"
print("feature cache with K_p = K_r = 1 equals no cache, token for token")

# %% [markdown]
# Two things to read: the caches save far more rows than time (on a model this small a step's
# fixed cost does not shrink with the rows), and the approximate ones change the text; for the
# feature cache, most of it.
#
# **Exercise 4** (docs/caches.md). Does the gap to the ideal close as the work per step grows?
# Rerun the cell with 16 or 32 prompts (`held_out_prompts(val_docs, 32)`), or
# `python bench.py --quick --batch-sizes 1 8 32`, and watch the speed-up against the ideal.

# %% [markdown]
# ## 5. The Repeat Curse and CoTA
#
# A feature cache reuses a position's features for up to K_r steps, so a position next to a fresh
# commit may still "think" its neighbour is a [MASK] and write the same word again: "the the".
# CoTA ("Context Tokens are Anchors", arXiv 2601.20520) is the paper's fix: CTAE, a distance gain
# on attention between answer tokens, and CTEV, a penalty on the confidence of slots whose
# neighbours' deep-layer entropy is high (`minidlm/cota.py`, the paper's constants). Our
# stale-first refresh spends the cache's refresh budget on the rows next to new commits first.
#
# The paper's protocol: one block, one token per step, greedy. The ARR (adjacent repetition rate,
# `repetition_report`) is the share of adjacent token pairs that are equal, over 32 prompts (the
# shown one and 31 held-out first sentences); `with a repeat` is the share of answers with at
# least one.

# %%
lesson = "Tom had a red ball."
curse_prompts = [lesson] + held_out_prompts(val_docs, N_PROMPTS - 1)
one_block = dict(gen_length=GEN, steps=GEN, block_length=GEN)
modes = {"no cache": SamplerConfig(**one_block),
         "feature cache": SamplerConfig(**one_block, cache="feature"),
         "feature + CoTA": SamplerConfig(**one_block, cache="feature", cota=CoTAConfig(ctae=True, ctev=True)),
         "feature, stale-first": SamplerConfig(**one_block, cache="feature", cache_stale_first=True)}
curse = decode_each(shipped, tok, curse_prompts, modes)
display(Markdown(markdown_table(curse, {
    "decode": lambda r: r["label"], "ARR": lambda r: f"{r['repetition'].ARR:.2%}",
    "with a repeat": lambda r: f"{r['repetition'].SRR:.0%}", "longest run": lambda r: r["repetition"].MRL,
    "tokens/s": lambda r: f"{r['tokens_per_s']:.0f}"})))

# %% [markdown]
# The first answer of each decode, with every token that repeats its neighbour marked
# `[[like this]]` (`minidlm.show.marked_text`; whitespace tokens are skipped, as in the ARR):

# %%
for r in curse:
    print(f"{r['label']} ({r['repeats']} repeated pairs):\n  {lesson}{r['text']}\n")

# %% [markdown]
# What to see: without a cache nothing repeats; the feature cache repeats in most answers; the
# paper's CoTA makes it **worse** on this 8-layer model (its entropy penalty steers commits next to
# the newest token, whose masked neighbours the cache has not refreshed); stale-first, which
# repairs the staleness itself, brings it back near zero. 32 prompts are noisy: the study in
# `docs/repeat-curse.md` uses 200 and three model seeds. And the ARR counts only adjacent equal
# tokens: a whole sentence said twice in a row (as the no-cache answer may do) scores nothing;
# `seq_rep_4` in the same report catches that.
#
# **Exercise 5** (README exercise 1). Staleness and the curse: add rows with
# `cache_kr=1` and `cache_kr=3` to `modes` (or run
# `python -m studies.repeat_study --rows feature-kr1,feature-kr3,feature --prompts 32 --seeds 0 --flow-prompts 0`).
# How do ARR and tokens/s move with K_r? Where would you set it for a class demo, and why?

# %% [markdown]
# ## 6. Attention sinks
#
# A sink is a key that many queries attend to although its content is not needed. In diffusion LMs
# the sinks **move** as the [MASK]s fill in. "One Token Is Enough" (arXiv 2601.19657) pins them with
# one extra learned [SINK] token at position 0 (`train_tiny.py --sink`; `checkpoints/tiny-sink.pt`).
# The probe (`minidlm/sinks.py`) records where the attention piles up at every step.
#
# **Where the top sink sits, per step.** One line per layer: the position of the key that gets the
# most attention (averaged over heads) at each of 64 steps, for a story started from nothing (the
# prompt is only the start-of-story mark at position 0, below the dotted line). Look for flat runs
# and jumps: a sink holds a position for a while, then moves. In the first steps several layers
# park on position 64, the last still-masked slot; later the sinks sit on tokens already written
# and step further right as the text fills in. First `tiny.pt`, then `tiny-sink.pt`.

# %%
display(Markdown("**checkpoints/tiny.pt** (no [SINK])"), Image(filename="docs/sink_trajectory.png", width=620))
display(Markdown("**checkpoints/tiny-sink.pt** (with [SINK])"), Image(filename="docs/tiny-sink/sink_trajectory.png", width=620))

# %% [markdown]
# **The attention itself**, at steps 1, 32 and 64 (rows) in layers 1, 5 and 8 (columns): each
# square is a map of query position (down) against key position (across), bright where a query
# attends. The bright diagonals are heads looking at a fixed offset (the token itself, its
# neighbours); a bright vertical stripe is a sink, one key that every query visits. In the [SINK]
# model key 0 is [SINK]: see how faint its column stays.

# %%
display(Markdown("**checkpoints/tiny.pt**"), Image(filename="docs/attention_maps.png", width=620))
display(Markdown("**checkpoints/tiny-sink.pt** (key 0 = [SINK])"), Image(filename="docs/tiny-sink/attention_maps.png", width=620))

# %% [markdown]
# The same probe, live, on one decode of each model (`sink_probe`): how often a head's top sink
# changes position from one step to the next, what kind of token it sits on, the top key's value
# norm over its head's mean (below 1 would be a no-op sink; above 1 a content hub), and the share
# of attention that goes to [SINK].

# %%
sink_model, _, _ = load_model("checkpoints/tiny-sink.pt")
probes = [dict(model=name, **sink_probe(m, tok, lesson, GEN)) for name, m in [("tiny.pt", shipped), ("tiny-sink.pt", sink_model)]]
display(Markdown(markdown_table(probes, {
    "model": lambda s: s["model"], "switch rate per step": lambda s: f"{s['switch_rate']:.1%}",
    "top sink on a [MASK]": lambda s: f"{s['top_sink_kind']['mask']:.0%}",
    "on a written token": lambda s: f"{s['top_sink_kind']['committed']:.0%}",
    "top key's value norm / mean": lambda s: f"{s['top_sink_value_norm_ratio']:.2f}",
    "attention on [SINK]": lambda s: f"{s['sink_mass']:.1%}" if "sink_mass" in s else "-"})))

# %% [markdown]
# What to see: the sinks move (about one step in ten), they are content hubs rather than no-op
# sinks (value norm above the mean), and the model barely uses [SINK] (about 1 % of the attention):
# at 2 M tokens of training there is little for it to pin. `docs/sinks.md` has the numbers over
# three seeds.
#
# **Exercise 6** (README exercise 3). Switch the sink off and on: `python sample.py --sinks` on
# `checkpoints/tiny.pt` and on `checkpoints/tiny-sink.pt`. Where does the attention go in each, and
# in which layers does [SINK] get the most?

# %% [markdown]
# ## 7. Infilling: text on both sides
#
# A left-to-right model can only continue. A masked-diffusion model predicts every masked position
# from everything around it, so the same reverse process fills holes anywhere (`sampler.infill`).
# `<|hole:N|>` marks N tokens to fill (`minidlm.holes.encode_canvas`; `filled_text` reads the
# answer back). Each text below is filled twice: with the text after the hole, and cut at the hole,
# as a left-to-right model would see it.

# %%
stories = [("Once upon a time, there was a boy named <|hole:1|>.", " He had a red ball. Tom put the ball under the bed."),
           ("Once upon a time, there was a girl named Lily. <|hole:8|>", " Lily put the kite under the bed.")]
for before, after in stories:
    for label, text in [("with the later text", before + after), ("cut at the hole", before)]:
        whole, pieces = fill(shipped, tok, text)
        print(f"{label:>20}: {whole}\n{'':>20}  filled in: {pieces}")
    print()

# %% [markdown]
# What to see: cut at the hole, the model may not even know that a name belongs there; with the
# later text, the filled sentence fits what follows more often (over 174 held-out stories, a
# blanked hero's sentence is grammatical 55.7 % of the time with the later text against 10.0 %
# without; `python -m studies.infill_study`). But the model rarely copies the name or object that
# the later text gives away: it learned the local grammar, not to carry a word from one sentence
# to another (`docs/infilling.md`).
#
# **Exercise 7** (README exercise 6). Both sides, sampled: fill
# `"There was a boy named Tom. <|hole:8|> Tom put the ball under the bed."` five times with
# `fill(shipped, tok, text, seed=s, temperature=0.8)` for s in 0..4 (or
# `python sample.py --prompt "..." --temperature 0.8 --num-samples 5`). Does the filled sentence
# give Tom a ball?
