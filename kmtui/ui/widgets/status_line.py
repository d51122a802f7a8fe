"""One line that is always true: token, log-in, idle-lock countdown, findings, approvals."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from rich.text import Text
from textual.widgets import Static

from kmtui.core.models import iso, utcnow
from kmtui.ui.text import plain

if TYPE_CHECKING:
    from kmtui.ui.app import KmtuiApp

PENDING_EVERY = 5  # seconds between counts of open approvals


class StatusLine(Static):
    def on_mount(self) -> None:
        self.pending = 0
        self.ticks = 0
        self.set_interval(1, self.tick)
        self.tick()

    def tick(self) -> None:
        app = cast("KmtuiApp", self.app)
        ws = app.workstation
        if self.ticks % PENDING_EVERY == 0:
            self.pending = int(
                ws.store.rows(
                    "SELECT count(*) AS n FROM approvals WHERE executed_at IS NULL "
                    "AND expires_at > ?",
                    (iso(utcnow()),),
                )[0]["n"]
            )
        self.ticks += 1
        text = Text()
        if ws.demo:
            text.append(" DEMO ", style="bold reverse")
        text.append(" ● logged in " if ws.hsm.logged_in else " ○ logged out ", style="bold")
        text.append("· token ")
        text.append_text(plain(app.token_label, limit=24))
        remaining = int(app.idle_remaining())
        text.append(f" · lock in {remaining // 60}:{remaining % 60:02d}")
        findings = app.findings
        if findings is None:
            text.append(" · reconciling…")
        elif findings:
            text.append(f" · ⚠ {findings} findings", style="bold")
        else:
            text.append(" · ✓ reconciled")
        if self.pending:
            text.append(f" · {self.pending} approvals open")
        if app.chain_status:
            text.append(f" · chain {app.chain_status}")
        self.update(text)
