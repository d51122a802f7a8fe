"""The one command-palette provider: every action, titled by category ("keys: rotate…")."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, cast

from textual.command import DiscoveryHit, Hit, Hits, Provider

from kmtui.ui.screens.main import PANES

if TYPE_CHECKING:
    from kmtui.ui.app import KmtuiApp


class KmtuiCommands(Provider):
    def entries(self) -> list[tuple[str, Callable[[], Any]]]:
        app = cast("KmtuiApp", self.app)
        found: list[tuple[str, Callable[[], Any]]] = []
        main = app.main_screen()
        if main is not None and not app.locked:
            for pane in main.panes():
                found += [
                    (title, partial(main.run_pane_action, pane, action))
                    for title, action in pane.PALETTE
                ]
            found += [(f"view: {name}", partial(main.action_show, name)) for name, _, _ in PANES]
            found.append(("app: lock now", app.action_lock))
        found += [("app: help", app.action_help), ("app: quit", app.exit)]
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
