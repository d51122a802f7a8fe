"""Regenerate screenshots/ from a freshly seeded demo workstation: `make screenshots`."""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from textual.widgets import DataTable

from kmtui import config, demo, paths
from kmtui.launch import open_workstation
from kmtui.ui.app import KmtuiApp
from kmtui.ui.screens.login import LoginScreen
from kmtui.ui.screens.main import MainScreen

SIZE = (120, 36)


async def _shoot(app: KmtuiApp, screen: type, out: Path, name: str) -> None:
    async with app.run_test(size=SIZE) as pilot:
        for _ in range(200):
            if isinstance(app.screen, screen) and (
                screen is not MainScreen or app.screen.query_one("#keys", DataTable).row_count
            ):
                break
            await pilot.pause(0.05)
        await pilot.pause(1.0)
        app.save_screenshot(filename=f"{name}.svg", path=str(out))


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as home:
        p = demo.ensure(paths.under(Path(home)))
        cfg = config.load(p.config_file, demo=True)
        ws = open_workstation(p, cfg)
        try:
            asyncio.run(_shoot(KmtuiApp(ws, cfg, paths=p, pin=None), LoginScreen, out, "login"))
            app = KmtuiApp(ws, cfg, paths=p, pin=demo.pin_of(p))
            asyncio.run(_shoot(app, MainScreen, out, "main"))
        finally:
            ws.close()
    print(f"screenshots written to {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "screenshots"))
