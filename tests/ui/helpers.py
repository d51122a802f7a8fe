"""Driving the app in tests: start it on the team's workstation, wait, approve."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from textual.pilot import Pilot
from textual.widgets import Button, Input, Static

from kmtui.config import Config
from kmtui.core.control.operations import ApprovalInput
from kmtui.core.control.pin import Credential
from kmtui.paths import under
from kmtui.service import Workstation
from kmtui.ui.app import KmtuiApp
from kmtui.ui.screens.approval import ApprovalScreen
from kmtui.ui.screens.main import MainScreen
from kmtui.ui.widgets.paged_table import PagedTable

SIZE = (100, 30)


def text_of(widget: Static) -> str:
    """What a Static shows, as plain text, whatever renderable it holds (Text or a grid)."""
    console = Console(width=300, file=io.StringIO(), record=True, color_system=None)
    console.print(widget.content)
    return console.export_text()


def app_for(
    ws: Workstation, tmp_path: Path, login: Credential | None, config: Config | None = None
) -> KmtuiApp:
    """The app on `ws`, logged in with `login` at start (None: it shows the log-in screen)."""
    return KmtuiApp(ws, config or Config(), paths=under(tmp_path / "home"), login=login)


async def until(pilot: Pilot, condition: Callable[[], object], what: str = "") -> None:
    for _ in range(200):
        if condition():
            return
        await pilot.pause(0.03)
    raise AssertionError(f"timed out waiting for {what or condition}")


async def main_ready(pilot: Pilot) -> MainScreen:
    app = pilot.app
    await until(pilot, lambda: isinstance(app.screen, MainScreen), "the main screen")
    screen = app.screen
    assert isinstance(screen, MainScreen)
    await until(pilot, lambda: app.findings is not None, "reconciliation")
    return screen


async def keys_loaded(pilot: Pilot, count: int) -> PagedTable:
    table = pilot.app.screen.query_one("#keys", PagedTable)
    await until(pilot, lambda: table.row_count == count, f"{count} keys listed")
    return table


async def approve(pilot: Pilot, approvals: list[ApprovalInput], label: str = "") -> None:
    """Fill the approval dialog like two people at the console would, and run it."""
    app = pilot.app
    await until(
        pilot,
        lambda: isinstance(app.screen, ApprovalScreen) and app.screen.query("#approve"),
        "the approval dialog",
    )
    dialog = app.screen
    if label:
        dialog.query_one("#confirm-label", Input).value = label
    for i, a in enumerate(approvals):
        dialog.query_one(f"#name-{i}", Input).value = a.operator
        dialog.query_one(f"#code-{i}", Input).value = a.code
    dialog.query_one("#approve", Button).press()
    for _ in range(100):
        if app.screen is not dialog:
            return
        await pilot.pause(0.03)
    shown = [str(s.render()) for s in dialog.query(".approver-result, #approval-error")]
    raise AssertionError(f"the operation did not run: {shown}")
