"""Text with holes, for infilling: `<|hole:N|>` marks N tokens for the model to fill in.

    "Once upon a time, <|hole:6|> had a red ball. Mia loved <|hole:4|>."

The placeholder belongs to the `<|...|>` family of the tokenizer's special tokens (`<|endoftext|>`,
`<|mask|>`), which ordinary text does not use, and it says how many tokens the hole gets. A
canvas is the prompt's ids (end-of-text first, as in training) with N [MASK] ids at each hole:
what `sampler.infill` takes. Anything that starts like a placeholder but is not one (`<|hole|>`,
`<|hole:x|>`, `<|hole:0|>`) is an error, never silently text.
"""
import re

PLACEHOLDER = re.compile(r"<\|hole:(\d+)\|>")
STARTS_LIKE_ONE = re.compile(r"<\|\s*hole", re.IGNORECASE)
SYNTAX = "<|hole:N|> with N >= 1 tokens"
MAX_HOLE = 65536  # train_tiny.py's largest --seq-len: no model has a context to hold a longer hole


class HoleError(ValueError):
    pass


def split_holes(text: str) -> list:
    """The text as alternating pieces: str for given text, int for a hole of that many tokens."""
    pieces, at = [], 0
    for match in PLACEHOLDER.finditer(text):
        digits = match.group(1).lstrip("0") or "0"
        if len(digits) > len(str(MAX_HOLE)) or int(digits) > MAX_HOLE:  # int() of 5000 digits fails too
            raise HoleError(f"a hole of {digits[:12]}{'...' if len(digits) > 12 else ''} tokens is longer "
                            f"than any model's context (at most {MAX_HOLE}): write {SYNTAX}")
        pieces += [text[at:match.start()], int(digits)]
        at = match.end()
    pieces.append(text[at:])
    for piece in pieces[::2]:
        bad = STARTS_LIKE_ONE.search(piece)
        if bad:
            shown = piece[bad.start():bad.start() + 16].split("\n")[0]
            raise HoleError(f"malformed hole placeholder near {shown!r}: write {SYNTAX}")
    for n in pieces[1::2]:
        if n < 1:
            raise HoleError(f"a hole of {n} tokens: write {SYNTAX}")
    return pieces


def has_holes(text: str) -> bool:
    return bool(STARTS_LIKE_ONE.search(text))


def encode_canvas(tokenizer, text: str) -> list:
    """Ids of `text` (end-of-text first) with each hole as that many [MASK] ids. One space right
    before a hole goes to the hole: BPE words carry their leading space, so "Tom <|hole:2|>"
    leaves the model " ran" to write rather than a bare " " token it never saw before a word."""
    ids, pieces = [tokenizer.eot_id], split_holes(text)
    for i, piece in enumerate(pieces):
        if i % 2:
            ids += [tokenizer.mask_id] * piece
        else:
            ids += tokenizer.encode(piece[:-1] if piece.endswith(" ") and i + 1 < len(pieces) else piece)
    return ids


def filled_text(tokenizer, canvas, filled) -> tuple:
    """(the whole text, the filled-in pieces) of a canvas (ids with [MASK]s) after infilling:
    `filled` is the sampler's row for it (right-aligned); the leading end-of-text is dropped."""
    filled = filled[len(filled) - len(canvas):].tolist()
    pieces, current, text_ids = [], [], []
    for given, new in zip(canvas[1:], filled[1:]):
        text_ids.append(new)
        if given == tokenizer.mask_id:
            current.append(new)
        elif current:
            pieces.append(tokenizer.decode(current))
            current = []
    if current:
        pieces.append(tokenizer.decode(current))
    return tokenizer.decode(text_ids), pieces
