"""One line that is always true: token, log-in, the operator session, idle-lock countdown,
findings and open approvals."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from rich.text import Text
from textual import work
from textual.message import Message
from textual.widgets import Static

from kmtui.ui.text import plain
from kmtui.ui.widgets.paged_table import READER
from kmtui.ui.workers import attempt

if TYPE_CHECKING:
    from kmtui.ui.app import KmtuiApp

PENDING_EVERY = 5  # seconds between counts of open approvals and of who approved


def session_part(started: float, now: float, present: Sequence[str]) -> str:
    """'session 14m: alice, bob' — how long this console session has run and who has approved
    something in it (the same people the end-of-session transcript lists as present)."""
    minutes = int(max(0.0, now - started) // 60)
    span = f"{minutes}m" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}"
    return f"session {span}" + (": " + ", ".join(present) if present else "")


class StatusLine(Static):
    class PendingCounted(Message):
        def __init__(self, count: int, present: list[str]) -> None:
            super().__init__()
            self.count = count
            self.present = present

    def on_mount(self) -> None:
        self.pending = 0
        self.present: list[str] = []
        self.ticks = 0
        self.set_interval(1, self.tick)
        self.tick()

    @work(exit_on_error=False, exclusive=True, group="pending")
    async def count_pending(self) -> None:
        """Counted on the reader thread: the UI thread never waits on SQLite for this line."""
        app = cast("KmtuiApp", self.app)
        reads, since = app.workstation.store.reads, app.session_approvals_since

        def count() -> tuple[int, list[str]]:
            return reads.pending_approvals(), reads.approvers_since(since)

        loop = asyncio.get_running_loop()
        counted = await loop.run_in_executor(
            READER, lambda: attempt(self, "Counting open approvals", count)
        )
        if counted is not None:
            self.post_message(self.PendingCounted(*counted))

    def on_status_line_pending_counted(self, message: PendingCounted) -> None:
        if (message.count, message.present) != (self.pending, self.present):
            self.pending, self.present = message.count, message.present
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
        if ws.store.damage is not None:
            text.append(" · ✗ DATABASE DAMAGED: restore a backup", style="bold reverse")
        elif ws.seals.changed:
            first = ws.seals.changed[0].subject
            more = f" +{len(ws.seals.changed) - 1}" if len(ws.seals.changed) > 1 else ""
            text.append_text(
                plain(f" · ✗ REGISTRY CHANGED OUTSIDE KMTUI: {first}{more}", "bold reverse", 80)
            )
        elif findings is None and ws.store.checked != "full":
            text.append(" · checking the database…")
        elif findings is None:
            text.append(" · reconciling…")
        elif findings:
            text.append(f" · ⚠ {findings} findings", style="bold")
        else:
            text.append(" · ✓ reconciled")
        if self.pending:
            text.append(f" · {self.pending} approvals open")
        if app.chain_status:
            text.append(f" · chain {app.chain_status}")
        # Last, and on a line of its own when the terminal is too narrow for both.
        session = plain(session_part(app.session_started, time.monotonic(), self.present), limit=48)
        width = self.size.width or 1000  # not laid out yet: one line until it is
        fits = text.cell_len + 3 + session.cell_len <= width
        text.append(" · " if fits else "\n ")
        text.append_text(session)
        self.update(text)
