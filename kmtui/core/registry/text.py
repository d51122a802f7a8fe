"""Text crossing the SQLite boundary: user text into SQL patterns, SQLite's text to a terminal."""

from __future__ import annotations

import re

from kmtui.core.safetext import clean

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
"""A plain table or column name, the only kind kmtui writes into SQL text itself."""
_MESSAGE_LIMIT = 200


def plain(value: object) -> str:
    """Paths and SQLite messages end up on a terminal: neutralise them and keep them short."""
    return clean(value, _MESSAGE_LIMIT)


def like_escape(text: str) -> str:
    return re.sub(r"([\\%_])", r"\\\1", text)
