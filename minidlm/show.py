"""`sample.py --show`: watch the reverse process fill the masks in, one frame per step.

Each frame redraws the first sample on stderr from column `start` (the response of a continuation,
or the whole text when infilling): committed tokens in plain text, the tokens committed at this
very step highlighted, still-masked positions as grey blocks.
"""
import math
import shutil
import sys
import time

GREY, BOLD_GREEN, RESET = "\033[90m", "\033[1;32m", "\033[0m"
MASK_GLYPH = "\u2591"  # light shade block


class DenoisingView:
    def __init__(self, tokenizer, start: int, delay: float, stream=sys.stderr):
        self.tok, self.start, self.delay, self.stream = tokenizer, start, delay, stream
        self.previous = None
        self.lines_drawn = 0
        self.colour = stream.isatty()

    def _paint(self, text, style):
        return f"{style}{text}{RESET}" if self.colour else text

    def draw(self, step: int, canvas, cache=None):  # the sampler's on_step(step, x, cache); cache unused
        row = canvas[0, self.start:].tolist()  # the one host sync, and only with --show
        pieces, width = [], 0
        for i, t in enumerate(row):
            text = MASK_GLYPH if t == self.tok.mask_id else self.tok.decode([t]).replace("\n", " ")
            width += len(text)
            if t == self.tok.mask_id:
                text = self._paint(text, GREY)
            elif self.previous is not None and self.previous[i] == self.tok.mask_id:
                text = self._paint(text, BOLD_GREEN)
            pieces.append(text)
        self.previous = row
        header = f"step {step:4d} | "
        if self.colour and self.lines_drawn:  # move up and overwrite the previous frame
            self.stream.write(f"\033[{self.lines_drawn}F\033[J")
        self.stream.write(header + "".join(pieces) + "\n")
        self.stream.flush()
        columns = shutil.get_terminal_size().columns
        self.lines_drawn = math.ceil((len(header) + width) / columns) if self.colour else 0
        time.sleep(self.delay)

    def close(self):
        self.stream.write("\n")
        self.stream.flush()


def marked_text(tokenizer, ids, colour: bool) -> tuple:
    """Decode a response (cut at end-of-text) with every token that repeats its neighbour marked:
    reversed video on a terminal, else [[brackets]]. Whitespace-only tokens neither count nor
    break a pair, as in the repetition metrics (repetition.py). Returns (text, repeated pairs)."""
    out, previous, repeats = [], None, 0
    for t in tokenizer.until_eot(ids):
        piece = tokenizer.decode([t]).replace("\n", " ")
        if tokenizer.is_whitespace_token(t):
            out.append(piece)
            continue
        if t == previous:
            repeats += 1
            word = piece.lstrip(" ")
            space = piece[:len(piece) - len(word)]
            piece = space + (f"\033[7m{word}{RESET}" if colour else f"[[{word}]]")
        out.append(piece)
        previous = t
    return "".join(out), repeats
