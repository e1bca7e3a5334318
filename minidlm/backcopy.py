"""Guo et al.'s bigram-backcopy task as text: attention heads with nothing to do on most tokens.

"Active-dormant attention heads" (Guo et al., arXiv 2410.13835): a sequence is drawn from a
bigram model, except that after one of a few TRIGGER words the next word is a copy of the word
just before the trigger:

    ... w_{i-1}  trigger  w_{i-1}  successor(w_{i-1}) ...

A head that learns the copy has work only next to a trigger and nothing to do everywhere else.
In small transformers such heads grow attention sinks with low-norm values (a place to put
attention that adds nothing: their "no-op"), which is why the sink study uses this text as its
dormant-head lever (docs/sinks.md).

    python -m minidlm.backcopy runs/backcopy.txt       # 4,000 documents, about 2 MB
    python train_tiny.py --data runs/backcopy.txt --out runs/backcopy.pt
    python -m minidlm.backcopy --score runs/backcopy.pt # did it learn the copy?

Words are two syllables ("kalo"), so the BPE learns each as one token with its leading space;
every word has a few likely successors (a learnable bigram part), and triggers follow a word
with probability `trigger_rate`. Documents are lines separated by blank lines, as train_tiny.py
reads a text file. The same seed gives the same text.
"""
import random
import sys

import torch

CONSONANTS, VOWELS = "bdfgklmnprstv", "aeiou"


def vocabulary(n_words: int, rng) -> list:
    syllables = [c + v for c in CONSONANTS for v in VOWELS]
    words = sorted({rng.choice(syllables) + rng.choice(syllables) for _ in range(20 * n_words)})
    return rng.sample(words, n_words)


def backcopy_documents(n_docs: int = 4000, n_words: int = 64, n_triggers: int = 3, successors: int = 4,
                       trigger_rate: float = 0.1, min_len: int = 60, max_len: int = 120, seed: int = 0) -> list:
    """Documents (lists of words) of the bigram-backcopy task; the first `n_triggers` words of
    `vocabulary` are the triggers (returned by `triggers`)."""
    rng = random.Random(seed)
    words = vocabulary(n_words + n_triggers, rng)
    triggers, plain = words[:n_triggers], words[n_triggers:]
    follow = {w: rng.sample(plain, successors) for w in plain}
    docs = []
    for _ in range(n_docs):
        doc, length = [rng.choice(plain)], rng.randint(min_len, max_len)
        while len(doc) < length:
            last = doc[-1]
            if last in triggers:
                doc.append(doc[-2])  # the copy: the word before the trigger
            elif rng.random() < trigger_rate:
                doc.append(rng.choice(triggers))
            else:
                doc.append(rng.choice(follow[last]))
        if doc[-1] in triggers:
            doc.append(doc[-2])
        docs.append(doc)
    return docs


def triggers(n_words: int = 64, n_triggers: int = 3, seed: int = 0) -> list:
    """The trigger words `backcopy_documents` uses for these settings."""
    return vocabulary(n_words + n_triggers, random.Random(seed))[:n_triggers]


@torch.no_grad()
def copy_accuracy(model, tokenizer, docs, trigger_words, max_docs: int = 200, seed: int = 0) -> dict:
    """How often the model fills masked copies (the words after a trigger) correctly, beside as
    many masked ordinary words chosen at random: each document's first window, with all of its
    copies (or those ordinary words) masked at once (an ordinary word is neither a copy, nor a
    trigger, nor right before one). Every word is one BPE token here; documents where not, or
    without a trigger, are skipped. Words are encoded with their leading space, as inside a
    document."""
    device = next(model.parameters()).device
    trig = torch.tensor([tokenizer.encode(" " + w)[0] for w in trigger_words], device=device)
    g = torch.Generator().manual_seed(seed)
    hits, scored = {"copy": [0, 0], "ordinary": [0, 0]}, 0
    for doc in docs[:max_docs]:
        ids = [tokenizer.encode(" " + w) for w in doc.split()][:model.cfg.max_seq_len]
        if any(len(i) != 1 for i in ids):
            continue
        x = torch.tensor([i[0] for i in ids], device=device)
        is_trig = torch.isin(x, trig)
        copy, before = torch.zeros_like(is_trig), torch.zeros_like(is_trig)
        copy[1:], before[:-1] = is_trig[:-1], is_trig[1:]  # a word before a trigger can be read off its copy
        if not copy.any():
            continue
        ordinary = torch.nonzero(~copy & ~before & ~is_trig)[:, 0]
        chosen = ordinary[torch.randperm(len(ordinary), generator=g)[:int(copy.sum())].to(device)]
        scored += 1
        for kind, masked in (("copy", copy), ("ordinary", torch.zeros_like(copy).index_fill_(0, chosen, True))):
            logits = model(torch.where(masked, tokenizer.mask_id, x)[None])[0]
            hits[kind][0] += int((logits.argmax(-1) == x)[masked].sum())
            hits[kind][1] += int(masked.sum())
    return {**{kind: h / n if n else float("nan") for kind, (h, n) in hits.items()}, "documents": scored}


def main():
    from .cli import ArgumentParser, number, run_main
    from .files import preflight, write_text
    p = ArgumentParser(description="Write Guo et al.'s bigram-backcopy task (dormant heads) as a text file.")
    p.add_argument("out", nargs="?", help="the text file to write")
    p.add_argument("--docs", type=number(int, 1, 10**6), default=4000, help="documents (default %(default)s)")
    p.add_argument("--seed", type=number(int, 0, 2**31 - 1), default=0)
    p.add_argument("--score", metavar="CKPT", default=None,
                   help="instead: how often a model trained on this text (written with the same "
                        "--seed) fills a masked copy correctly, against an ordinary word")

    def run():
        args = p.parse_args()
        if (args.out is None) == (args.score is None):
            p.error("give a text file to write, or --score CHECKPOINT")
        if args.score:
            return score(args)
        preflight(outputs=[args.out])
        text = "\n\n".join(" ".join(doc) for doc in backcopy_documents(args.docs, seed=args.seed))
        write_text(args.out, lambda f: f.write(text + "\n"))
        print(f"wrote {args.docs:,} documents, {len(text.encode()):,} bytes, to {args.out} "
              f"(triggers: {', '.join(triggers(seed=args.seed))})", file=sys.stderr)
    run_main(run)


def score(args):
    """--score: on the validation documents the checkpoint's own training run held out."""
    from .checkpoint import CheckpointError, load_model
    from .cli import die
    from .files import preflight
    from .corpus import CorpusError
    from .data import load_documents
    preflight(inputs=[args.score])
    try:
        model, tok, meta = load_model(args.score)
        _, val = load_documents(meta["args"]["data"], seed=meta["args"]["seed"])
    except (CheckpointError, CorpusError, KeyError) as e:
        die(f"cannot score {args.score}: {e}")
    acc = copy_accuracy(model.eval(), tok, val, triggers(seed=args.seed))
    if not acc["documents"]:
        die(f"no validation document of {args.score} has a trigger of --seed {args.seed} with every word "
            f"one token: was it trained on a backcopy text of that seed, with the default --vocab-size? "
            f"(its data: {meta['args']['data'] or 'the embedded corpus'})")
    print(f"masked copies filled correctly: {acc['copy']:.1%}; masked ordinary words: {acc['ordinary']:.1%} "
          f"({acc['documents']} validation documents of {meta['args']['data']})")


if __name__ == "__main__":
    main()
