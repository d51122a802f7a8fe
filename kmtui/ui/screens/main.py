"""The main screen (foundation placeholder): the token and the key registry, paged from SQLite."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from kmtui.core import reconcile
from kmtui.core.errors import KmtuiError
from kmtui.core.hsm import TokenInfo
from kmtui.core.models import Key, KeyState
from kmtui.core.service import Workstation
from kmtui.ui.messages import KeysLoaded, Reconciled, WorkFailed
from kmtui.ui.text import plain

PAGE = 200
STATE_STYLE = {
    KeyState.ACTIVE: "bold green",
    KeyState.PRE_ACTIVATION: "cyan",
    KeyState.SUSPENDED: "yellow",
    KeyState.DEACTIVATED: "dim",
    KeyState.COMPROMISED: "bold red",
    KeyState.DESTROY_SCHEDULED: "magenta",
    KeyState.DESTROYED: "dim strike",
    KeyState.DESTROYED_COMPROMISED: "dim red",
    KeyState.QUARANTINED: "bold red reverse",
}


class MainScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("r", "refresh", "Refresh", id="keys.refresh"),
        Binding("q", "app.quit", "Quit", id="app.quit"),
    ]

    def __init__(self, workstation: Workstation, info: TokenInfo) -> None:
        super().__init__()
        self.workstation = workstation
        self.info = info

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="body"):
            with Vertical(id="token-pane"):
                yield Static("Token", classes="pane-title")
                yield Static(self._token_text(), id="token-info")
                yield Static("Reconciling token and registry…", id="reconcile")
            with Vertical(id="keys-pane"):
                yield Static("Keys", classes="pane-title", id="keys-title")
                yield DataTable(id="keys", cursor_type="row", zebra_stripes=True)
        yield Static(self._status_text(), id="status")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#keys", DataTable)
        for label in ("Label", "State", "Algorithm", "Purpose", "KCV / fingerprint", "Id"):
            table.add_column(label, key=label.lower())
        table.focus()
        self.load_keys()
        self.reconcile_now()

    def _token_text(self) -> Text:
        i = self.info
        text = Text()
        for name, value in (
            ("Label", i.label),
            ("Serial", i.serial),
            ("Maker", i.manufacturer),
            ("Model", i.model),
            ("Firmware", i.firmware_version),
            ("Library", i.library),
        ):
            text.append(f"{name:<9}", style="bold")
            text.append_text(plain(value))
            text.append("\n")
        return text

    def _status_text(self) -> Text:
        text = Text()
        text.append(
            " ● logged in " if self.workstation.hsm.logged_in else " ○ logged out ", style="bold"
        )
        text.append_text(plain(f" token {self.info.label} · serial {self.info.serial}"))
        if self.workstation.demo:
            text.append("  DEMO WORKSTATION — not for real keys", style="bold reverse")
        return text

    def action_refresh(self) -> None:
        self.load_keys()

    @work(thread=True, exit_on_error=False, exclusive=True, group="keys")
    def load_keys(self) -> None:
        try:
            keys = self.workstation.store.page_keys(limit=PAGE)
            total = self.workstation.store.count_keys()
        except KmtuiError as exc:
            self.post_message(WorkFailed("Loading keys", str(exc)))
            return
        self.post_message(KeysLoaded(keys, total))

    @work(thread=True, exit_on_error=False, exclusive=True, group="reconcile")
    def reconcile_now(self) -> None:
        """Token and registry compared at start: interrupted work finished, differences flagged."""
        try:
            report = reconcile.run(self.workstation, actor="console")
        except KmtuiError as exc:
            self.post_message(WorkFailed("Reconciliation", str(exc)))
            return
        self.post_message(Reconciled(report))

    def on_reconciled(self, message: Reconciled) -> None:
        report = message.report
        text = Text()
        if report.clean:
            text.append("✓ token and registry agree", style="bold green")
            text.append(f"\n  {report.matched} key versions matched")
        else:
            text.append(f"⚠ {len(report.findings)} findings", style="bold red")
            for finding in report.findings[:8]:
                text.append("\n• ")
                text.append_text(
                    plain(f"{finding.kind}: {finding.label or finding.key_id or '-'}", limit=32)
                )
            self.notify(
                f"Reconciliation found {len(report.findings)} differences between token and "
                "registry; see the Token pane or run `kmtui reconcile`.",
                severity="warning",
                markup=False,
                timeout=10,
            )
        if report.completed:
            text.append(f"\n  finished {len(report.completed)} interrupted operations")
        self.query_one("#reconcile", Static).update(text)
        self.load_keys()

    def on_keys_loaded(self, message: KeysLoaded) -> None:
        table = self.query_one("#keys", DataTable)
        table.clear()
        for key in message.keys:
            table.add_row(*self._row(key), key=key.id)
        shown = len(message.keys)
        suffix = f" (first {shown} of {message.total})" if message.total > shown else ""
        self.query_one("#keys-title", Static).update(f"Keys — {message.total}{suffix}")

    @staticmethod
    def _row(key: Key) -> list[Text]:
        current = next((v for v in key.versions if v.version == key.current_version), None)
        check = (current.kcv or current.fingerprint[:23]) if current else ""
        state = KeyState(key.state)
        return [
            plain(key.label, limit=48),
            plain(state.value, STATE_STYLE.get(state, "")),
            plain(key.algorithm),
            plain(key.purpose),
            plain(check),
            plain(key.id, "dim"),
        ]

    def on_work_failed(self, message: WorkFailed) -> None:
        self.notify(f"{message.what} failed: {message.error}", severity="error", markup=False)
