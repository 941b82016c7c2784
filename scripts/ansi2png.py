#!/usr/bin/env python3
"""Renders a colour terminal capture (`tmux capture-pane -e -p`) as a PNG.

Usage: ansi2png.py CAPTURE.ansi OUT.png [--cols N] [--rows N]

Understands SGR: 16/256/truecolor foreground and background, bold, dim, italic (drawn upright),
underline, reverse, and their resets. Box-drawing and block characters are drawn as shapes so
lines join without gaps; everything else comes from DejaVu Sans Mono. Needs Pillow.
"""

import argparse
import re
import sys
import unicodedata

from PIL import Image, ImageDraw, ImageFont

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf"
FONT_BOLD = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono-Bold.ttf"
FONT_SIZE = 14
CELL_W, CELL_H = 8, 17
PAD = 12

BG = (24, 26, 33)
FG = (204, 208, 214)
# The 16 ANSI colours: a muted dark theme, readable on BG.
PALETTE16 = [
    (40, 44, 52), (224, 96, 102), (142, 192, 110), (222, 180, 96),
    (97, 165, 232), (196, 126, 220), (86, 190, 200), (190, 194, 200),
    (100, 106, 118), (240, 120, 126), (166, 214, 134), (240, 204, 120),
    (128, 188, 250), (214, 152, 236), (110, 212, 220), (240, 242, 245),
]


def palette256(n):
    if n < 16:
        return PALETTE16[n]
    if n < 232:
        n -= 16
        steps = [0, 95, 135, 175, 215, 255]
        return (steps[n // 36], steps[(n // 6) % 6], steps[n % 6])
    v = 8 + (n - 232) * 10
    return (v, v, v)


class Style:
    __slots__ = ("fg", "bg", "bold", "dim", "underline", "reverse")

    def __init__(self):
        self.reset()

    def reset(self):
        self.fg = None  # None = default
        self.bg = None
        self.bold = self.dim = self.underline = self.reverse = False

    def copy(self):
        s = Style()
        s.fg, s.bg, s.bold, s.dim, s.underline, s.reverse = (
            self.fg, self.bg, self.bold, self.dim, self.underline, self.reverse)
        return s


def apply_sgr(style, params):
    # tmux writes `;`, some programs `:` for the extended colour forms; read both.
    parts = [p for p in re.split(r"[;:]", params)] if params else ["0"]
    nums = [int(p) if p.isdigit() else 0 for p in parts]
    i = 0
    while i < len(nums):
        n = nums[i]
        if n == 0:
            style.reset()
        elif n == 1:
            style.bold = True
        elif n == 2:
            style.dim = True
        elif n == 4:
            style.underline = True
        elif n == 7:
            style.reverse = True
        elif n == 22:
            style.bold = style.dim = False
        elif n == 24:
            style.underline = False
        elif n == 27:
            style.reverse = False
        elif 30 <= n <= 37:
            style.fg = PALETTE16[n - 30]
        elif 90 <= n <= 97:
            style.fg = PALETTE16[n - 90 + 8]
        elif 40 <= n <= 47:
            style.bg = PALETTE16[n - 40]
        elif 100 <= n <= 107:
            style.bg = PALETTE16[n - 100 + 8]
        elif n == 39:
            style.fg = None
        elif n == 49:
            style.bg = None
        elif n in (38, 48) and i + 1 < len(nums):
            if nums[i + 1] == 5 and i + 2 < len(nums):
                color = palette256(nums[i + 2] & 255)
                i += 2
            elif nums[i + 1] == 2:
                # 38;2;r;g;b, or 38:2::r:g:b with an empty colour-space id.
                rest = nums[i + 2:i + 6]
                if len(parts) > i + 5 and parts[i + 2] == "":
                    rgb, i = rest[1:4], i + 5
                else:
                    rgb, i = rest[0:3], i + 4
                color = tuple(max(0, min(255, c)) for c in (rgb + [0, 0, 0])[:3])
            else:
                color = None
                i += 1
            if color is not None:
                if n == 38:
                    style.fg = color
                else:
                    style.bg = color
        i += 1


ESC_RE = re.compile(r"\x1b(?:\[([0-9;:?<=>]*)([ -/]*[@-~])|\][^\x07\x1b]*(?:\x07|\x1b\\)|[()][0-9A-Za-z]|[@-Z\\-_])")


def parse(text):
    """Returns rows of cells: (char, Style) or None for the right half of a wide character."""
    rows = []
    style = Style()
    for line in text.split("\n"):
        row = []
        pos = 0
        for m in ESC_RE.finditer(line):
            put_text(row, line[pos:m.start()], style)
            pos = m.end()
            if m.group(2) == "m":
                apply_sgr(style, m.group(1))
        put_text(row, line[pos:], style)
        rows.append(row)
    if rows and not rows[-1]:
        rows.pop()
    return rows


def put_text(row, text, style):
    for ch in text:
        if ch == "\r" or (ord(ch) < 32 and ch != "\t"):
            continue
        if ch == "\t":
            ch = " "
        if unicodedata.combining(ch):
            continue
        s = style.copy()
        row.append((ch, s))
        if unicodedata.east_asian_width(ch) in ("W", "F"):
            row.append(None)


def blend(a, b, t):
    return tuple(round(x * (1 - t) + y * t) for x, y in zip(a, b))


def colors(s):
    fg = s.fg if s.fg is not None else FG
    bg = s.bg if s.bg is not None else BG
    if s.reverse:
        fg, bg = bg, fg
    if s.dim:
        fg = blend(fg, bg, 0.45)
    return fg, bg


# Box drawing: for each character, the weight (1 light, 2 heavy, 3 double) of its arms
# (up, right, down, left).
BOX = {}


def _box(chars, arms):
    for ch in chars:
        BOX[ch] = arms


_box("─", (0, 1, 0, 1)); _box("━", (0, 2, 0, 2)); _box("═", (0, 3, 0, 3))
_box("│", (1, 0, 1, 0)); _box("┃", (2, 0, 2, 0)); _box("║", (3, 0, 3, 0))
_box("┌╭", (0, 1, 1, 0)); _box("┐╮", (0, 0, 1, 1)); _box("└╰", (1, 1, 0, 0)); _box("┘╯", (1, 0, 0, 1))
_box("├", (1, 1, 1, 0)); _box("┤", (1, 0, 1, 1)); _box("┬", (0, 1, 1, 1)); _box("┴", (1, 1, 0, 1))
_box("┼", (1, 1, 1, 1))
_box("┏", (0, 2, 2, 0)); _box("┓", (0, 0, 2, 2)); _box("┗", (2, 2, 0, 0)); _box("┛", (2, 0, 0, 2))
_box("┣", (2, 2, 2, 0)); _box("┫", (2, 0, 2, 2)); _box("┳", (0, 2, 2, 2)); _box("┻", (2, 2, 0, 2))
_box("╋", (2, 2, 2, 2))
_box("╔", (0, 3, 3, 0)); _box("╗", (0, 0, 3, 3)); _box("╚", (3, 3, 0, 0)); _box("╝", (3, 0, 0, 3))
_box("╠", (3, 3, 3, 0)); _box("╣", (3, 0, 3, 3)); _box("╦", (0, 3, 3, 3)); _box("╩", (3, 3, 0, 3))
_box("╬", (3, 3, 3, 3))
_box("╴", (0, 0, 0, 1)); _box("╵", (1, 0, 0, 0)); _box("╶", (0, 1, 0, 0)); _box("╷", (0, 0, 1, 0))


def draw_box(d, x, y, arms, fg):
    up, right, down, left = arms
    cx, cy = x + CELL_W // 2 - 1, y + CELL_H // 2 - 1

    def hline(x0, x1, w):
        if w == 3:
            d.rectangle([x0, cy - 1, x1, cy - 1], fill=fg)
            d.rectangle([x0, cy + 1, x1, cy + 1], fill=fg)
        else:
            d.rectangle([x0, cy, x1, cy + w - 1], fill=fg)

    def vline(y0, y1, w):
        if w == 3:
            d.rectangle([cx - 1, y0, cx - 1, y1], fill=fg)
            d.rectangle([cx + 1, y0, cx + 1, y1], fill=fg)
        else:
            d.rectangle([cx, y0, cx + w - 1, y1], fill=fg)

    thick = max(arms) if max(arms) != 3 else 1
    if left:
        hline(x, cx + (thick - 1 if right or up or down else 0), left)
    if right:
        hline(cx, x + CELL_W - 1, right)
    if up:
        vline(y, cy + (thick - 1 if down or left or right else 0), up)
    if down:
        vline(cy, y + CELL_H - 1, down)


def draw_block(d, x, y, ch, fg, bg):
    """Block elements U+2580..U+259F; returns False for ones left to the font."""
    o = ord(ch)
    w, h = CELL_W, CELL_H
    if o == 0x2588:  # █
        d.rectangle([x, y, x + w - 1, y + h - 1], fill=fg)
    elif 0x2581 <= o <= 0x2587:  # ▁..▇ lower eighths
        top = y + h - round(h * (o - 0x2580) / 8)
        d.rectangle([x, top, x + w - 1, y + h - 1], fill=fg)
    elif o == 0x2580:  # ▀
        d.rectangle([x, y, x + w - 1, y + h // 2 - 1], fill=fg)
    elif 0x2589 <= o <= 0x258F:  # ▉..▏ left eighths
        width = round(w * (0x2590 - o) / 8)
        d.rectangle([x, y, x + max(1, width) - 1, y + h - 1], fill=fg)
    elif o == 0x2590:  # ▐
        d.rectangle([x + w // 2, y, x + w - 1, y + h - 1], fill=fg)
    elif o in (0x2591, 0x2592, 0x2593):  # ░▒▓ as flat shades, a bit stronger than their
        t = {0x2591: 0.4, 0x2592: 0.6, 0x2593: 0.8}[o]  # ink share so a dim track still shows
        d.rectangle([x, y, x + w - 1, y + h - 1], fill=blend(bg, fg, t))
    elif o == 0x2594:  # ▔
        d.rectangle([x, y, x + w - 1, y + max(1, h // 8) - 1], fill=fg)
    elif o == 0x2595:  # ▕
        d.rectangle([x + w - max(1, w // 8), y, x + w - 1, y + h - 1], fill=fg)
    else:
        return False
    return True


def render(rows, cols, nrows):
    fonts = {
        False: ImageFont.truetype(FONT, FONT_SIZE),
        True: ImageFont.truetype(FONT_BOLD, FONT_SIZE),
    }
    img = Image.new("RGB", (cols * CELL_W + 2 * PAD, nrows * CELL_H + 2 * PAD), BG)
    d = ImageDraw.Draw(img)
    ascent, descent = fonts[False].getmetrics()
    baseline_off = (CELL_H - (ascent + descent)) // 2
    for r in range(nrows):
        row = rows[r] if r < len(rows) else []
        y = PAD + r * CELL_H
        for c, cell in enumerate(row[:cols]):
            if cell is None:
                continue
            ch, s = cell
            fg, bg = colors(s)
            x = PAD + c * CELL_W
            wide = c + 1 < len(row) and row[c + 1] is None
            cw = CELL_W * (2 if wide else 1)
            if bg != BG:
                d.rectangle([x, y, x + cw - 1, y + CELL_H - 1], fill=bg)
            if ch == " ":
                pass
            elif ch in BOX:
                draw_box(d, x, y, BOX[ch], fg)
            elif 0x2580 <= ord(ch) <= 0x259F and draw_block(d, x, y, ch, fg, bg):
                pass
            else:
                font = fonts[s.bold]
                # Centre the glyph in its cell: DejaVu's advance (8.4 px at 14 pt) is a bit
                # wider than the cell.
                adv = font.getlength(ch)
                gx = x + (cw - adv) / 2
                d.text((gx, y + baseline_off), ch, font=font, fill=fg)
            if s.underline:
                d.line([x, y + CELL_H - 2, x + cw - 1, y + CELL_H - 2], fill=fg)
    return img


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("capture")
    ap.add_argument("out")
    ap.add_argument("--cols", type=int, help="width in cells (default: the widest line)")
    ap.add_argument("--rows", type=int, help="height in cells (default: the number of lines)")
    args = ap.parse_args()
    with open(args.capture, encoding="utf-8", errors="replace") as f:
        rows = parse(f.read())
    cols = args.cols or max((len(r) for r in rows), default=1)
    nrows = args.rows or len(rows)
    img = render(rows, cols, nrows)
    # Few distinct colours: a palette PNG is several times smaller and looks the same.
    img = img.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    img.save(args.out, optimize=True)


if __name__ == "__main__":
    sys.exit(main())
