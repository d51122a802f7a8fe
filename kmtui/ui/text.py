"""Every string shown in a widget goes through here: plain text, never markup, no control chars."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.theme import Theme

from kmtui.core.models import KeyState
from kmtui.core.safetext import clean


def plain(value: object, style: str = "", limit: int = 0) -> Text:
    return Text(clean(value, limit), style=style, no_wrap=False, end="")


def when(timestamp: str) -> str:
    """Registry timestamps shortened to the minute: a custodian compares dates, not microseconds."""
    return clean(timestamp[:16].replace("T", " ")) if timestamp else ""


def state_styles(theme: Theme) -> dict[KeyState, str]:
    """State colours taken from the theme, so a light or projector theme keeps them readable."""
    ok, warn, bad = theme.success or "green", theme.warning or "yellow", theme.error or "red"
    calm = theme.secondary or theme.primary
    return {
        KeyState.ACTIVE: f"bold {ok}",
        KeyState.PRE_ACTIVATION: calm,
        KeyState.SUSPENDED: f"bold {warn}",
        KeyState.DEACTIVATED: "dim",
        KeyState.COMPROMISED: f"bold {bad}",
        KeyState.DESTROY_SCHEDULED: f"bold {warn} underline",
        KeyState.DESTROYED: "dim strike",
        KeyState.DESTROYED_COMPROMISED: f"dim {bad} strike",
        KeyState.QUARANTINED: f"bold {bad} reverse",
    }


def labelled(pairs: list[tuple[str, object]], width: int = 14) -> Table:
    """Name/value lines for detail views; the names are ours, the values plain text. A long value
    wraps under itself, never back under the names."""
    grid = Table.grid(padding=(0, 1), expand=True)
    grid.add_column(width=max(1, width - 1), no_wrap=True, style="bold")
    grid.add_column(ratio=1, overflow="fold")
    for name, value in pairs:
        grid.add_row(Text(name), value if isinstance(value, Text) else plain(value))
    return grid
