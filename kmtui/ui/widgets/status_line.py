"""One line that is always true: token, log-in, idle-lock countdown, findings, approvals."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

from rich.text import Text
from textual import work
from textual.message import Message
from textual.widgets import Static

from kmtui.core.models import iso, utcnow
from kmtui.ui.text import plain
from kmtui.ui.widgets.paged_table import READER
from kmtui.ui.workers import attempt

if TYPE_CHECKING:
    from kmtui.ui.app import KmtuiApp

PENDING_EVERY = 5  # seconds between counts of open approvals


class StatusLine(Static):
    class PendingCounted(Message):
        def __init__(self, count: int) -> None:
            super().__init__()
            self.count = count

    def on_mount(self) -> None:
        self.pending = 0
        self.ticks = 0
        self.set_interval(1, self.tick)
        self.tick()

    @work(exit_on_error=False, exclusive=True, group="pending")
    async def count_pending(self) -> None:
        """Counted on the reader thread: the UI thread never waits on SQLite for this line."""
        store = cast("KmtuiApp", self.app).workstation.store

        def count() -> int:
            rows = store.rows(
                "SELECT count(*) AS n FROM approvals WHERE executed_at IS NULL AND expires_at > ?",
                (iso(utcnow()),),
            )
            return int(rows[0]["n"])

        loop = asyncio.get_running_loop()
        counted = await loop.run_in_executor(
            READER, lambda: attempt(self, "Counting open approvals", count)
        )
        if counted is not None:
            self.post_message(self.PendingCounted(counted))

    def on_status_line_pending_counted(self, message: PendingCounted) -> None:
        if message.count != self.pending:
            self.pending = message.count
            self.tick(count=False)

    def tick(self, count: bool = True) -> None:
        app = cast("KmtuiApp", self.app)
        ws = app.workstation
        if count:
            if self.ticks % PENDING_EVERY == 0:
                self.count_pending()
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
