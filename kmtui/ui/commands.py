"""The one command-palette provider: every action, titled by category ("keys: rotate…")."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, cast

from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.types import IgnoreReturnCallbackType

from kmtui.ui.screens.main import PANES

if TYPE_CHECKING:
    from kmtui.ui.app import KmtuiApp


class KmtuiCommands(Provider):
    def entries(self) -> list[tuple[str, IgnoreReturnCallbackType]]:
        """Each pane's bindings (Pane.palette), the views, then what the app does everywhere."""
        app = cast("KmtuiApp", self.app)
        found: list[tuple[str, IgnoreReturnCallbackType]] = []
        main = app.main_screen()
        if main is not None and not app.locked:
            for name, _, cls in PANES:
                pane = main.pane(name)
                found += [
                    (f"{name}: {title}", partial(main.run_pane_action, pane, action))
                    for title, action in cls.palette()
                ]
            found += [(f"view: {name}", partial(main.action_show, name)) for name, _, _ in PANES]
            found.append(("app: lock now", app.action_lock))
        # Quit as `q` does: through the end of session and its signed transcript.
        found += [("app: help", app.action_help), ("app: quit", app.action_end_session)]
        found += [
            (f"theme: {name}", partial(app.use_theme, name))
            for name in sorted(app.available_themes)
        ]
        return found

    async def discover(self) -> Hits:
        for title, callback in self.entries():
            yield DiscoveryHit(title, callback)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, callback in self.entries():
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), callback)
