"""Text from the data (file names, labels, reasons) made safe to print on a terminal or in a
one-line message: control characters are shown as Python escapes instead of being obeyed."""

from __future__ import annotations

import unicodedata

# Characters a terminal obeys or that reorder or break a line: C0/C1 controls and DEL (Cc),
# bidirectional overrides and isolates (which can make a name read backwards), line and
# paragraph separators.
_BIDI = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _unsafe(ch: str) -> bool:
    return unicodedata.category(ch) in ("Cc", "Zl", "Zp") or ch in _BIDI


def printable(text: str) -> str:
    """`text` with each unsafe character replaced by its escape (ESC -> \\x1b, U+202E ->
    \\u202e); everything else, spaces and backslashes included, is kept as it is."""
    if not any(_unsafe(ch) for ch in text):
        return text
    return "".join(
        ch.encode("unicode_escape").decode("ascii") if _unsafe(ch) else ch for ch in text
    )


def error_line(e: BaseException) -> str:
    """An exception's message as one printable line (Arrow's and the clients' can span
    several); its type's name when it has none."""
    lines = str(e).strip().splitlines()
    return printable(lines[0] if lines else type(e).__name__)
