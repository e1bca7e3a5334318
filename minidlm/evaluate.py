"""Sample quality on the embedded corpus: the grammatical rate of generated continuations.

The corpus grammar comes with an exact recognizer (corpus.is_grammatical), so a sample can be
scored without a judge model: prompt with the first sentence of a held-out story, generate, and
count which COMPLETE generated sentences the grammar can produce. The rate pools sentences over
all samples (a sample with more sentences weighs more); a trailing fragment is not counted
(corpus.grammatical_rate, the one definition of the rate).
Beside it, what a validation NELBO means: in bits, and against the unigram entropy.
"""
import math

import torch

from .corpus import complete_sentences, grammatical_rate, split_sentences
from .autoregressive import ar_generate
from .sampler import SamplerConfig, generate


def held_out_prompts(val_docs, n: int) -> list:
    """The first sentence of each of the first n validation stories."""
    return [split_sentences(doc)[0] for doc in val_docs[:n]]


def continuation_text(tokenizer, row) -> str:
    """Decode one generated row, cut at the first end-of-text."""
    return tokenizer.decode(tokenizer.until_eot(row))


@torch.no_grad()
def sample_grammatical_rate(model, tokenizer, prompts, cfg: SamplerConfig, seed=0, batch_size=16):
    """(rate over all complete generated sentences, number of such sentences, the texts). An
    autoregressive model decodes left to right (cfg's gen_length and temperature; the rest is
    the diffusion sampler's)."""
    texts = []
    for start in range(0, len(prompts), batch_size):
        batch = [tokenizer.prompt(p) for p in prompts[start:start + batch_size]]
        if model.cfg.causal:
            out = ar_generate(model, batch, tokenizer.mask_id, tokenizer.eot_id, cfg.gen_length,
                              cfg.temperature, seed=seed + start)
        else:
            out = generate(model, batch, tokenizer.mask_id, tokenizer.eot_id, cfg, seed=seed + start)
        texts.extend(continuation_text(tokenizer, row) for row in out)
    n = sum(len(complete_sentences(text)) for text in texts)
    return grammatical_rate(texts), n, texts


# ---- whether a study can measure a model --------------------------------------------------------
# Each returns None, or one line saying why the measurement would mean nothing; the studies call
# them right after loading their checkpoints, before any long work.

def trained_on(meta: dict):
    """The --data a checkpoint was trained on, or None for the embedded corpus (or not recorded)."""
    args = meta.get("args") if isinstance(meta, dict) else None
    data = args.get("data") if isinstance(args, dict) else None
    return data if isinstance(data, str) and data else None


def data_problem(path: str, meta: dict, data) -> str | None:
    """A model measured on other text than it was trained on: the embedded corpus's grammar on a
    model of the user's text, or one user text's held-out part on a model of another."""
    import os
    from .files import same_file
    recorded = trained_on(meta)
    if recorded is None and data is None:
        return None
    if recorded is None:
        if isinstance(meta, dict) and isinstance(meta.get("args"), dict):  # trained on the embedded corpus
            return (f"{path} was trained on the embedded corpus, not on --data {data}: drop --data, "
                    f"or give a model trained on it")
        return None  # an older checkpoint that did not record its data: nothing to compare
    if data is None:
        return (f"{path} was trained on {recorded}, and this measures it on the embedded corpus (whose "
                f"grammar it never saw): pass --data {recorded}, or give a model of the embedded corpus")
    if same_file(recorded, data) or (not os.path.exists(recorded) and os.path.basename(recorded) ==
                                     os.path.basename(data)):
        return None
    return f"{path} was trained on {recorded}, not on --data {data}: pass the text it was trained on"


def context_problem(path: str, model, prompt_tokens: int, gen_length: int, what: str) -> str | None:
    """A prompt of `prompt_tokens` plus `gen_length` generated tokens that the model's context
    cannot hold (a model trained with a short --seq-len)."""
    context = model.cfg.max_seq_len
    if prompt_tokens + gen_length <= context:
        return None
    return (f"{path} has a context of {context} tokens (trained with --seq-len {context}); {what} needs "
            f"{prompt_tokens} prompt + {gen_length} generated = {prompt_tokens + gen_length}: give a model "
            f"trained with --seq-len {prompt_tokens + gen_length} or more")


def seeds_problem(paths, models) -> str | None:
    """Models averaged as seeds of one recipe: no file twice (it would count as two seeds) and one
    architecture (ModelConfig; the vocabulary size may differ by a tokenizer's few ids)."""
    from dataclasses import asdict
    from .files import same_file
    for i, path in enumerate(paths):
        for other in paths[:i]:
            if same_file(path, other):
                return f"{path} is given twice ({other}): each seed's model once"
    shape = lambda m: {k: v for k, v in asdict(m.cfg).items() if k != "vocab_size"}
    for path, model in zip(paths[1:], models[1:]):
        diff = [k for k, v in shape(model).items() if shape(models[0])[k] != v]
        if diff:
            k = diff[0]
            return (f"{path} has {k} {getattr(model.cfg, k)} where {paths[0]} has {getattr(models[0].cfg, k)}: "
                    f"models averaged as seeds must share one architecture")
    return None


def describe_nelbo(nats: float, se: float) -> str:
    """One line: bits per token and the perplexity bound, each with its standard error."""
    bits, bits_se = nats / math.log(2), se / math.log(2)
    ppl = math.exp(nats) if nats < 700 else float("inf")  # a diverged model must not crash the log
    return (f"val NELBO (a bound) {bits:.3f} +- {bits_se:.3f} bits/token "
            f"(perplexity <= {ppl:.2f} +- {ppl * se:.2f})")


def describe_nll(nats: float, se: float) -> str:
    """The same for an autoregressive model, whose number is the exact NLL, not a bound."""
    bits, bits_se = nats / math.log(2), se / math.log(2)
    ppl = math.exp(nats) if nats < 700 else float("inf")
    return f"val NLL (exact) {bits:.3f} +- {bits_se:.3f} bits/token (perplexity {ppl:.2f} +- {ppl * se:.2f})"


def unigram_entropy_bits(windows, vocab_size: int) -> float:
    """Entropy (bits/token) of the token frequencies of `windows` themselves: what a model that
    knows only word frequencies would score. A NELBO near it means nothing was learned from context."""
    counts = torch.bincount(windows.flatten().cpu(), minlength=vocab_size).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log2()).sum())


PLATEAU_MARGIN_BITS = 0.5  # a model within this of the unigram entropy has not learned from context


def plateau_warning(meta: dict):
    """One line for stderr when a checkpoint's last validation NELBO is not clearly below the
    unigram entropy of its validation text (the word-frequency plateau), else None."""
    unigram = meta.get("unigram_bits_per_token")
    evals = meta.get("evals") or []
    bits = meta.get("metrics", {}).get("val_bits_per_token", evals[-1]["bits"] if evals else None)
    if unigram is None or bits is None or bits < unigram - PLATEAU_MARGIN_BITS:
        return None
    return (f"warning: this model scores {bits:.2f} bits/token against {unigram:.2f} for word "
            f"frequencies alone: it has not learned to use context yet (train it longer), so expect "
            f"empty or word-salad text")


def main():
    """python -m minidlm.evaluate CHECKPOINT... [--prompts N]: the grammatical rate of greedy samples
    (64 tokens in 2 blocks of 32, as train_tiny.py measures it) on N held-out prompts of the
    embedded corpus, for each checkpoint: one line each."""
    from .checkpoint import CheckpointError, load_model
    from .cli import ArgumentParser, die, number, run_main
    from .files import preflight
    from .data import load_documents
    p = ArgumentParser(description="Grammatical rate of greedy samples on held-out prompts.")
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--prompts", type=number(int, 1, 1000), default=128, help="held-out prompts (default 128)")

    def run():
        args = p.parse_args()
        preflight(inputs=args.checkpoints)
        prompts = held_out_prompts(load_documents(None)[1], args.prompts)
        models = []
        for path in args.checkpoints:  # every model checked before the first is measured
            try:
                model, tok, meta = load_model(path)
            except CheckpointError as e:
                die(str(e))
            longest = max(len(tok.prompt(t)) for t in prompts)
            problem = (data_problem(path, meta, None)
                       or context_problem(path, model, longest, 64, "the grammatical rate"))
            if problem:
                die(problem)
            models.append((path, model, tok))
        for path, model, tok in models:
            rate, n, _ = sample_grammatical_rate(model, tok, prompts,
                                                 SamplerConfig(gen_length=64, steps=64, block_length=32))
            print(f"{path}: {100 * rate:.1f} % of {n} sentences ({len(prompts)} prompts)", flush=True)
    run_main(run)



if __name__ == "__main__":
    main()
