"""Does the model use the text AFTER a hole? Infilling against continuation on held-out stories.

    python -m studies.infill_study                                  # the shipped model, 200 stories
    python -m studies.infill_study --checkpoint runs/seeds/base-0.pt runs/seeds/base-1.pt runs/seeds/base-2.pt

Every held-out story of the embedded corpus introduces its main character by name in the first
sentence and its object ("a red ball") in the second, and most name both again later ("Mia hugged
the ball"). For each story where the word comes back later, that first mention becomes a hole of
exactly its token count, and the model fills it in two ways:
- both sides: the story with the hole, the later text included (`sampler.infill`);
- left only: the story cut at the hole (a continuation of that many tokens, as a left-to-right
  model would have to).
"recovered" counts the holes filled with exactly the original word; "grammatical" counts the
filled-in sentences the corpus grammar accepts (a name must agree with "girl"/"boy"). A name of
the right gender guessed at random would be recovered about 1 in 40 times, an object 1 in 48.
Greedy, one token per step, one block over the hole; mean +- sd over several models when given.
An autoregressive checkpoint (train_tiny.py --objective ar) can only fill "left only": it continues
the cut story left to right (studies/ar_compare.py sets it beside the diffusion model).
"""
from minidlm.cli import quiet_early_ctrl_c

quiet_early_ctrl_c(__name__)  # before the heavy imports: a Ctrl-C while torch loads is one line

import json
import re
import sys

import torch

from minidlm.checkpoint import CheckpointError, load_model
from minidlm.cli import ArgumentParser, cell, die, number, pick_device, run_main
from minidlm.files import numbered, preflight, write_json
from minidlm.corpus import NAMES, STORY_WORDS, is_grammatical, split_sentences
from minidlm.data import load_documents
from minidlm.evaluate import seeds_problem, trained_on
from minidlm.holes import encode_canvas, filled_text
from minidlm.autoregressive import ar_generate
from minidlm.sampler import SamplerConfig, infill

TARGETS = {"name": sorted(n for names in NAMES.values() for n in names), "object": STORY_WORDS["THING"]}
CONTEXTS = ("both sides", "left only")


def first_mention(story: str, words) -> tuple:
    """(start, end) of the first of `words` in the story, if the same word comes back later."""
    match = re.search(r"\b(" + "|".join(words) + r")\b", story)
    if match and re.search(r"\b" + match.group(1) + r"\b", story[match.end():]):
        return match.start(), match.end()
    return None


def holes_of(tok, story: str, span, context: str) -> tuple:
    """The canvas with the word at `span` as a hole of its own token count (the space before it
    belongs to the hole, as in holes.encode_canvas), cut at the hole for "left only"."""
    start, end = span
    prefix, word, suffix = story[:start], story[start:end], story[end:]
    n = len(tok.encode((" " if prefix.endswith(" ") else "") + word))
    canvas = encode_canvas(tok, prefix + f"<|hole:{n}|>" + (suffix if context == "both sides" else ""))
    return canvas, word, prefix, suffix


def fill_all(model, tok, canvases, batch_size: int, cache: str) -> list:
    """The filled canvases, batched by the number of masked tokens (a batch must share it). An
    autoregressive model continues each canvas's text before its hole, which must end it."""
    groups, out = {}, [None] * len(canvases)
    for i, c in enumerate(canvases):
        groups.setdefault(c.count(tok.mask_id), []).append(i)
    for n, members in groups.items():
        cfg = SamplerConfig(gen_length=n, steps=n, block_length=n, cache=cache)
        for at in range(0, len(members), batch_size):
            chunk = members[at:at + batch_size]
            if model.cfg.causal:
                if any(canvases[i][-n:] != [tok.mask_id] * n for i in chunk):
                    raise ValueError("an autoregressive model fills only a hole at the end (left only)")
                new = ar_generate(model, [canvases[i][:-n] for i in chunk], tok.mask_id, tok.eot_id, n)
                rows = [torch.cat([torch.tensor(canvases[i][:-n]), row.cpu()]) for i, row in zip(chunk, new)]
            else:
                rows = infill(model, [canvases[i] for i in chunk], tok.mask_id, tok.eot_id, cfg)
            for i, row in zip(chunk, rows):
                out[i] = row
    return out


def measure(model, tok, stories, kind: str, context: str, batch_size: int, cache: str) -> dict:
    cases = []
    for story in stories:
        span = first_mention(story, TARGETS[kind])
        if span:
            canvas, word, prefix, suffix = holes_of(tok, story, span, context)
            if len(canvas) <= model.cfg.max_seq_len:
                cases.append((canvas, word, prefix, suffix))
    filled = fill_all(model, tok, [c[0] for c in cases], batch_size, cache)
    recovered = grammatical = 0
    for (canvas, word, prefix, suffix), row in zip(cases, filled):
        piece = filled_text(tok, canvas, row)[1][0]
        recovered += piece.strip() == word
        text = prefix.rstrip(" ") + piece + suffix  # the story with the model's word in it
        k = len(split_sentences(prefix.rstrip(" ") + piece)) - 1  # the sentence that held the hole
        grammatical += is_grammatical(split_sentences(text)[k])
    n = max(len(cases), 1)
    return {"stories": len(cases), "recovered": recovered / n, "grammatical": grammatical / n}


def build_parser():
    p = ArgumentParser(description="Infilling against continuation: does the model use the text after a hole?")
    p.add_argument("--checkpoint", nargs="+", default=["checkpoints/tiny.pt"],
                   help="one model, or several trained alike with different seeds (mean +- sd)")
    p.add_argument("--stories", type=number(int, 1, 1000), default=200,
                   help="held-out stories to try (those whose word comes back later are used)")
    p.add_argument("--cache", default="none", choices=["none", "prefix", "dual", "feature"])
    p.add_argument("--batch-size", type=number(int, 1, 4096), default=64)
    p.add_argument("--json", default=None, help="also write the rows here")
    p.add_argument("--from-json", default=None, metavar="PATH", help="print a table saved with --json again")
    p.add_argument("--device", default="auto")
    return p


def table(meta, rows) -> str:
    models = meta["checkpoint"]
    lines = [f"{meta['stories']} held-out stories (those whose word comes back later), greedy, cache "
          f"{meta['cache']}; rates in %; " + (f"model {models[0]}" if len(models) == 1 else
                                              f"mean +- sd over {len(models)} models ({', '.join(models)})"),
             "| hole | context | stories | recovered | grammatical |", "|---|---|---|---|---|"]
    for r in rows:
        pm = r["per_model"]
        lines.append(f"| {r['hole']} | {r['context']} | {round(sum(m['stories'] for m in pm) / len(pm))} | "
                     f"{cell([m['recovered'] for m in pm], '.1f', 100)} | "
                     f"{cell([m['grammatical'] for m in pm], '.1f', 100)} |")
    return "\n".join(lines)


def print_saved(path):
    try:
        with open(path) as f:
            saved = json.load(f)
        text = table(saved["meta"], saved["rows"])
    except (OSError, ValueError, KeyError, IndexError, TypeError, ZeroDivisionError):
        die(f"{path} is not a table written by infill_study.py --json")
    print(text)


def main():
    args = build_parser().parse_args()
    if args.from_json:
        preflight(inputs={"--from-json": args.from_json})
        return print_saved(args.from_json)
    preflight(outputs={"--json": args.json},
              inputs=numbered("--checkpoint", args.checkpoint))
    try:
        device = pick_device(args.device)
        models = [load_model(path, device) for path in args.checkpoint]
    except (ValueError, CheckpointError) as e:
        die(str(e))
    for path, (model, _, meta) in zip(args.checkpoint, models):
        if model.cfg.causal:
            die(f"{path} is an autoregressive model: it cannot fill a hole from both sides "
                f"(python -m studies.ar_compare sets it, left only, beside a diffusion model)")
        if trained_on(meta):
            die(f"{path} was trained on {trained_on(meta)}: this study needs the embedded corpus")
    problem = seeds_problem(args.checkpoint, [model for model, _, _ in models])
    if problem:
        die(problem)
    stories = load_documents()[1][:args.stories]
    for path, (model, tok, _) in zip(args.checkpoint, models):  # every hole kind needs stories that fit
        for kind in TARGETS:
            fits = [len(holes_of(tok, story, span, "both sides")[0]) <= model.cfg.max_seq_len
                    for story in stories for span in [first_mention(story, TARGETS[kind])] if span]
            if fits and not any(fits):
                shortest = min(len(holes_of(tok, story, span, "both sides")[0]) for story in stories
                               for span in [first_mention(story, TARGETS[kind])] if span)
                die(f"{path} has a context of {model.cfg.max_seq_len} tokens (trained with --seq-len "
                    f"{model.cfg.max_seq_len}): none of the {len(fits)} stories with a {kind} hole fits (the "
                    f"shortest is {shortest} tokens); give a model trained with --seq-len {shortest} or more")
            if not all(fits):
                print(f"note: {path}: {sum(fits)} of the {len(fits)} stories with a {kind} hole fit its "
                      f"{model.cfg.max_seq_len}-token context; its {kind} rows are over those (the shorter "
                      f"stories)", file=sys.stderr)
    rows = []
    for kind in TARGETS:
        for context in CONTEXTS:
            per_model = [measure(model, tok, stories, kind, context, args.batch_size, args.cache)
                         for model, tok, _ in models]
            rows.append({"hole": kind, "context": context, "per_model": per_model})
            print(f"{kind}, {context}: recovered {100 * per_model[0]['recovered']:.1f} %", file=sys.stderr)
    meta = {"checkpoint": args.checkpoint, "stories": args.stories, "cache": args.cache}
    print(table(meta, rows))
    if args.json:
        write_json(args.json, {"meta": meta, "rows": rows})
        print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    run_main(main)
