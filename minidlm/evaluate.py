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
        for path in args.checkpoints:
            try:
                model, tok, _ = load_model(path)
            except CheckpointError as e:
                die(str(e))
            rate, n, _ = sample_grammatical_rate(model, tok, prompts,
                                                 SamplerConfig(gen_length=64, steps=64, block_length=32))
            print(f"{path}: {100 * rate:.1f} % of {n} sentences ({len(prompts)} prompts)", flush=True)
    run_main(run)



if __name__ == "__main__":
    main()
