"""Regenerate screenshots/ from a freshly seeded demo workstation: `make screenshots`."""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from textual.pilot import Pilot

from kmtui import config, demo, paths
from kmtui.core.control.pin import PinHalves
from kmtui.launch import open_workstation
from kmtui.service import Workstation
from kmtui.ui.app import KmtuiApp
from kmtui.ui.screens.login import LoginScreen
from kmtui.ui.screens.main import MainScreen
from kmtui.ui.widgets.paged_table import PagedTable

SIZE = (120, 36)
SMALL = (80, 24)
THEMES = ("kmtui-dark", "kmtui-light", "kmtui-projector")


async def _settle(pilot: Pilot, ready: object) -> None:
    for _ in range(200):
        if callable(ready) and ready():
            break
        await pilot.pause(0.05)
    await pilot.pause(0.8)


async def _login(app: KmtuiApp, out: Path) -> None:
    async with app.run_test(size=SIZE) as pilot:
        await _settle(pilot, lambda: isinstance(app.screen, LoginScreen))
        app.save_screenshot(filename="login.svg", path=str(out))


async def _panes(app: KmtuiApp, out: Path, size: tuple[int, int], suffix: str = "") -> None:
    async with app.run_test(size=size) as pilot:

        def ready() -> bool:
            screen = app.screen
            return isinstance(screen, MainScreen) and bool(
                screen.query_one("#keys", PagedTable).row_count and app.findings is not None
            )

        await _settle(pilot, ready)
        app.save_screenshot(filename=f"main{suffix}.svg", path=str(out))
        if suffix:
            return
        for key, name in (("2", "policies"), ("3", "audit"), ("4", "operators"), ("5", "token")):
            await pilot.press(key)
            await pilot.pause(1.0)
            app.save_screenshot(filename=f"{name}.svg", path=str(out))
        await pilot.press("1")
        await pilot.pause(0.3)
        await pilot.press("o")
        await pilot.pause(0.8)
        app.save_screenshot(filename="approval.svg", path=str(out))
        await pilot.press("escape")
        await pilot.press("enter")
        await pilot.pause(1.0)
        app.save_screenshot(filename="key-detail.svg", path=str(out))


async def _theme(app: KmtuiApp, out: Path, theme: str) -> None:
    async with app.run_test(size=SIZE) as pilot:
        await _settle(pilot, lambda: isinstance(app.screen, MainScreen))
        app.theme = theme
        app.main_screen().reload_all()  # type: ignore[union-attr]
        await pilot.pause(1.0)
        app.save_screenshot(filename=f"theme-{theme}.svg", path=str(out))


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as home:
        p = demo.ensure(paths.under(Path(home)))
        cfg = config.load(p.config_file, demo=True)
        ws: Workstation = open_workstation(p, cfg)
        try:

            def app(login: PinHalves | None) -> KmtuiApp:
                return KmtuiApp(ws, cfg, paths=p, login=login)

            halves = demo.halves_of(p)
            asyncio.run(_login(app(None), out))
            asyncio.run(_panes(app(halves), out, SIZE))
            asyncio.run(_panes(app(halves), out, SMALL, "-80x24"))
            for theme in THEMES:
                asyncio.run(_theme(app(halves), out, theme))
        finally:
            ws.close()
    print(f"screenshots written to {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "screenshots"))
