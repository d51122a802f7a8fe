"""Every string shown in a widget goes through here: plain text, never markup, no control chars."""

from __future__ import annotations

from rich.text import Text

from kmtui.core.safetext import clean


def plain(value: object, style: str = "", limit: int = 0) -> Text:
    return Text(clean(value, limit), style=style, no_wrap=False, end="")
