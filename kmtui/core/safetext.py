"""Neutralise control characters in any string from the token, the database or a user.

Applied before text reaches a terminal (CLI output, every widget): a key label must not be able to
move the cursor, retitle the terminal, write the clipboard or reorder text with bidi overrides.
"""

from __future__ import annotations

import re
import unicodedata

_BIDI = {
    "\u061c",
    "\u200e",
    "\u200f",
    "\u202a",
    "\u202b",
    "\u202c",
    "\u202d",
    "\u202e",
    "\u2066",
    "\u2067",
    "\u2068",
    "\u2069",
}
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u2028\u2029\ufeff" + "".join(sorted(_BIDI)) + "\ud800-\udfff]"
)


def _escape(match: re.Match[str]) -> str:
    ch = match.group(0)
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def clean(value: object, limit: int = 0) -> str:
    """Printable text: control, bidi and lone-surrogate characters become visible escapes."""
    text = _UNSAFE.sub(_escape, str(value))
    if limit and len(text) > limit:
        text = text[: max(limit - 1, 0)] + "…"
    return text


def is_clean(value: str) -> bool:
    return _UNSAFE.search(value) is None and all(
        unicodedata.category(c) not in ("Cc", "Cs") for c in value
    )
