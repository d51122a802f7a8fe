"""The audit trail, newest first, a keyset page at a time; chain verification with progress."""

from __future__ import annotations

import time
from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import BindingType
from textual.containers import Horizontal
from textual.message import Message
from textual.widgets import DataTable, Input, ProgressBar, Static

from kmtui.core.audit.log import VerifyResult
from kmtui.core.errors import KmtuiError
from kmtui.core.models import AuditEvent
from kmtui.ui.filters import AuditFilter
from kmtui.ui.screens.key_detail import KeyDetailScreen
from kmtui.ui.text import plain, when
from kmtui.ui.widgets.paged_table import Fetch, Page, PagedTable, Row
from kmtui.ui.widgets.pane import Pane, PaneBinding
from kmtui.ui.workers import attempt

PAGE = 100
COLUMNS = ("Seq", "Time", "Actor", "Action", "Outcome", "Key", "Detail")
DETAIL_FIELDS = ("label", "reason", "operator", "policy", "finding", "message", "error", "state")


class AuditPane(Pane):
    BINDINGS: ClassVar[list[BindingType]] = [
        PaneBinding("slash", "filter", "Filter", id="audit.filter"),
        PaneBinding(
            "V", "verify", "Verify chain", id="audit.verify", palette="verify the chain now"
        ),
        PaneBinding("k", "key", "Open key", id="audit.key", palette="open the key of this event"),
        PaneBinding("f5", "refresh", "Refresh", id="audit.refresh", show=False),
    ]

    class Progressed(Message):
        def __init__(self, done: int, total: int) -> None:
            super().__init__()
            self.done = done
            self.total = total

    class Verified(Message):
        def __init__(self, result: VerifyResult, seconds: float) -> None:
            super().__init__()
            self.result = result
            self.seconds = seconds

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.audit_filter = AuditFilter()

    def compose(self) -> ComposeResult:
        yield Input(
            placeholder="filter: key:ID op:alice action:key.rotate outcome:refused since:2026-05",
            id="audit-filter",
        )
        with Horizontal(id="chain-row"):
            yield Static(
                Text("Chain not verified in this session — press V to verify."), id="chain"
            )
            yield ProgressBar(id="verify-progress", show_eta=False)
        yield PagedTable(id="audit", page_size=PAGE)
        yield Static("", id="event-detail")

    def on_mount(self) -> None:
        table = self.table
        for name in COLUMNS:
            table.add_column(name, key=name.lower())
        self.query_one("#verify-progress", ProgressBar).display = False
        self.table.reload(self._fetcher(self.audit_filter), now=True)  # first page: see reload

    @property
    def table(self) -> PagedTable:
        return self.query_one(PagedTable)

    def reload(self) -> None:
        self.query_one("#event-detail", Static).update("")  # until a row is highlighted again
        self.table.reload(self._fetcher(self.audit_filter))

    def _fetcher(self, f: AuditFilter) -> Fetch:
        audit = self.workstation.audit
        query = f.query()

        def fetch(after: Any) -> Page:
            found = audit.events(after_seq=after, limit=PAGE, newest_first=True, **query)
            rows: list[Row] = [(str(e.seq), event_row(e)) for e in found]
            return rows, (found[-1].seq if len(found) == PAGE else None)

        return fetch

    def filter_text(self, text: str) -> None:
        self.query_one("#audit-filter", Input).value = text

    @on(Input.Changed, "#audit-filter")
    def filter_changed(self, event: Input.Changed) -> None:
        try:
            self.audit_filter = AuditFilter.parse(event.value)
        except ValueError as exc:
            self.query_one("#chain", Static).update(plain(f"Filter: {exc}"))
            return
        self.reload()

    @on(Input.Submitted, "#audit-filter")
    def filter_done(self) -> None:
        self.table.focus()

    def action_filter(self) -> None:
        self.query_one("#audit-filter", Input).focus()

    def action_refresh(self) -> None:
        self.reload()

    def action_key(self) -> None:
        table = self.table
        if not table.row_count:
            return
        key_id = table.get_row_at(table.cursor_row)[COLUMNS.index("Key")].plain
        if not key_id:
            self.notify("This event concerns no key.", severity="warning")
            return
        self.app.push_screen(KeyDetailScreen(self.workstation, key_id))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_key()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        """The highlighted event in full under the table: the columns cut long details short."""
        event.stop()
        box = self.query_one("#event-detail", Static)
        try:
            seq = int(str(event.row_key.value))
            found = self.workstation.audit.events(after_seq=seq + 1, limit=1, newest_first=True)
            label = ""
            if found and found[0].key_id:
                label = self.workstation.store.reads.key_label(found[0].key_id)
        except (KmtuiError, ValueError):
            found = []
        box.update(describe(found[0], label) if found else "")

    # -- verification ---------------------------------------------------------------------------

    def action_verify(self) -> None:
        bar = self.query_one("#verify-progress", ProgressBar)
        bar.display = True
        bar.update(total=None, progress=0)
        self.query_one("#chain", Static).update("Verifying the chain…")
        self._verify()

    @work(thread=True, exit_on_error=False, exclusive=True, group="verify")
    def _verify(self) -> None:
        audit, reads = self.workstation.audit, self.workstation.store.reads
        started = time.monotonic()

        def run() -> VerifyResult:
            total = reads.last_audit_seq()

            def progressed(done: int) -> None:
                self.post_message(self.Progressed(done, total))

            return audit.verify(progress=progressed)

        result = attempt(self, "Verifying the audit trail", run)
        if result is not None:
            self.post_message(self.Verified(result, time.monotonic() - started))

    def on_audit_pane_progressed(self, message: Progressed) -> None:
        self.query_one("#verify-progress", ProgressBar).update(
            total=max(message.total, 1), progress=message.done
        )

    def on_audit_pane_verified(self, message: Verified) -> None:
        self.query_one("#verify-progress", ProgressBar).display = False
        r = message.result
        if r.ok:
            text = Text(f"✓ chain intact: {r.reason} in {message.seconds:.1f} s", style="bold")
        else:
            text = Text(f"✗ CHAIN BROKEN at event {r.first_bad_seq}: ", style="bold reverse")
            text.append_text(plain(r.reason))
        self.query_one("#chain", Static).update(text)
        self.kmtui.chain_status = "intact" if r.ok else "BROKEN"


def detail(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={params[k]}" for k in DETAIL_FIELDS if params.get(k) not in (None, ""))


def describe(e: AuditEvent, label: str) -> Text:
    """One event as a custodian reads it: who did what to which key, every detail, the hash."""
    text = Text()
    text.append_text(plain(f"#{e.seq} {e.ts[:19].replace('T', ' ')}  ", style="bold"))
    text.append_text(plain(f"{e.action} {e.outcome} by {e.actor}"))
    if e.key_id:
        text.append_text(plain(f" · key {label or '?'} ({e.key_id})"))
    params = " ".join(f"{k}={v}" for k, v in sorted(e.params.items()) if v not in (None, ""))
    if params:
        text.append_text(plain(f" · {params}", limit=400))
    text.append_text(plain(f" · hash {e.hash[:16]}…", style="dim"))
    return text


def event_row(e: AuditEvent) -> list[Text]:
    style = {"refused": "bold reverse", "failure": "bold"}.get(e.outcome, "")
    return [
        plain(e.seq),
        plain(when(e.ts)),
        plain(e.actor, limit=24),
        plain(e.action),
        plain(e.outcome, style),
        plain(e.key_id, "dim"),
        plain(detail(e.params), limit=80),
    ]
