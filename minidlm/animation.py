"""The reverse process as a picture: an animated GIF with one frame per denoising step.

    python sample.py --show --save docs/reverse_process.gif

`FrameRecorder` is an on_step hook (like `show.DenoisingView`) that keeps the first row of the
canvas after every step; `save_gif` draws each frame as wrapped text: committed tokens in black,
the tokens committed at this step in green, every still-masked position as a grey box, and the
step counter on top. It needs Pillow (which the plot extra's matplotlib brings).
"""
import os

FONT_SIZE, MARGIN, LINE_GAP = 18, 16, 8
INK, NEW, MASK, FAINT, PAPER = (20, 20, 20), (0, 140, 60), (200, 200, 200), (120, 120, 120), (255, 255, 255)


class FrameRecorder:
    """on_step(step, x, cache): the first row's tokens from column `start` after every step."""

    def __init__(self, start: int):
        self.start, self.frames = start, []

    def __call__(self, step: int, canvas, cache=None):
        self.frames.append(canvas[0, self.start:].tolist())  # a host sync, only when recording


def _font(size: int):
    from PIL import ImageFont
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size=size)


def _piece(tokenizer, t) -> tuple:
    """(text, is_mask) of one token; end-of-text shows as a pilcrow."""
    if t == tokenizer.mask_id:
        return "", True
    return (" \u00b6 " if t == tokenizer.eot_id else tokenizer.decode([t]).replace("\n", " ")), False


def _layout(pieces, font, width: int) -> list:
    """(x, line, piece index) for every piece, wrapped before a word (a piece that starts with a
    space, and the pieces that continue it) that would cross `width` pixels; a mask is a word."""
    size = lambda text, is_mask, at_start: (font.getlength("mm") + 2 if is_mask
                                            else font.getlength(text.lstrip(" ") if at_start else text))
    starts = lambda i: pieces[i][1] or pieces[i][0].startswith(" ") or i == 0
    places, x, line = [], 0, 0
    for i, (text, is_mask) in enumerate(pieces):
        if starts(i) and x > 0:
            j = i + 1
            while j < len(pieces) and not starts(j):
                j += 1
            word = size(text, is_mask, False) + sum(size(*pieces[k], False) for k in range(i + 1, j))
            if x + word > width:
                x, line = 0, line + 1  # a new line starts without the word's space
        places.append((x, line, i))
        x += size(text, is_mask, x == 0)
    return places


def save_gif(path: str, frames: list, tokenizer, prompt: str = "", width: int = 720,
             frame_ms: int = 80, hold_ms: int = 2000):
    """Write `frames` (lists of token ids, one per step) as an animated GIF of `width` pixels.
    `prompt` is drawn in grey above the answer. The last frame is held for `hold_ms`."""
    from PIL import Image, ImageDraw
    if not frames:
        raise ValueError("no frames to draw")
    font, small = _font(FONT_SIZE), _font(FONT_SIZE - 4)
    inner = width - 2 * MARGIN
    decoded = [[_piece(tokenizer, t) for t in frame] for frame in frames]
    # the layout of the final frame fixes the height; masks are as wide as "mm", so earlier
    # frames wrap differently: lay each out on its own, and take the tallest
    layouts = [_layout(pieces, font, inner) for pieces in decoded]
    line_h = FONT_SIZE + LINE_GAP
    top = MARGIN + (FONT_SIZE + LINE_GAP) * (2 if prompt else 1)
    lines = max(max((place[1] for place in places), default=0) for places in layouts) + 1
    height = top + lines * line_h + MARGIN
    images, previous = [], None
    for step, (frame, pieces, places) in enumerate(zip(frames, decoded, layouts), 1):
        image = Image.new("RGB", (width, height), PAPER)
        draw = ImageDraw.Draw(image)
        masked = sum(t == tokenizer.mask_id for t in frame)
        draw.text((MARGIN, MARGIN), f"step {step} of {len(frames)}   ({masked} [MASK]s left)", fill=FAINT, font=small)
        if prompt:
            draw.text((MARGIN, MARGIN + line_h), prompt, fill=FAINT, font=font)
        for x, line, i in places:
            text, is_mask = pieces[i]
            y = top + line * line_h
            if is_mask:
                draw.rounded_rectangle((MARGIN + x, y + 3, MARGIN + x + font.getlength("mm"), y + FONT_SIZE),
                                       radius=3, fill=MASK)
            else:
                fresh = previous is not None and previous[i] == tokenizer.mask_id or previous is None
                draw.text((MARGIN + x, y), text.lstrip(" ") if x == 0 else text,
                          fill=NEW if fresh else INK, font=font)
        images.append(image.convert("P", palette=Image.ADAPTIVE, colors=64))  # a small file
        previous = frame
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    durations = [frame_ms] * (len(images) - 1) + [hold_ms]
    images[0].save(path, save_all=True, append_images=images[1:], duration=durations, loop=0, optimize=True)
    return path
