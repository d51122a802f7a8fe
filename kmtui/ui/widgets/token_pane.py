"""The token: module, slot, token info, mechanisms, objects, and reconciliation findings."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.widgets import DataTable, Label, Static

from kmtui.core.control.operations import OpKind
from kmtui.core.keys.findings import Finding, Report
from kmtui.core.models import TokenInfo
from kmtui.ui.messages import Reconciled
from kmtui.ui.screens.forms import TextScreen
from kmtui.ui.text import labelled, plain
from kmtui.ui.widgets.pane import Pane, PaneBinding
from kmtui.ui.workers import attempt

SHOWN_FINDINGS = 500


class TokenPane(Pane):
    BINDINGS: ClassVar[list[BindingType]] = [
        PaneBinding(
            "r",
            "reconcile",
            "Reconcile now",
            id="token.reconcile",
            palette="reconcile with the registry now",
        ),
        PaneBinding(
            "a",
            "acknowledge",
            "Acknowledge finding",
            id="token.acknowledge",
            palette="acknowledge the selected finding…",
        ),
        PaneBinding(
            "f5",
            "refresh",
            "Refresh",
            id="token.refresh",
            show=False,
            palette="refresh token information",
        ),
    ]

    class Described(Message):
        def __init__(self, info: TokenInfo, mechanisms: list[str], objects: int) -> None:
            super().__init__()
            self.info = info
            self.mechanisms = mechanisms
            self.objects = objects

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.findings: list[Finding] = []

    def compose(self) -> ComposeResult:
        with Horizontal():
            with VerticalScroll(id="token-info-box"):
                yield Static("Reading the token…", id="token-info")
                yield Label("Mechanisms", classes="section")
                yield Static("", id="mechanisms")
            with VerticalScroll(id="findings-box"):
                yield Static("Reconciling token and registry…", id="reconcile")
                yield DataTable(id="findings", cursor_type="row")

    def on_mount(self) -> None:
        self.query_one("#findings", DataTable).add_columns("Finding", "Key", "Detail")
        if self.kmtui.token_info is not None:  # what log-in read, while the rest is counted
            self._show(self.kmtui.token_info, None, None)
        self.reload()

    def reload(self) -> None:
        self._describe()

    def action_refresh(self) -> None:
        self.reload()

    @work(thread=True, exit_on_error=False, exclusive=True, group="token")
    def _describe(self) -> None:
        hsm = self.workstation.hsm
        found = attempt(
            self,
            "Reading the token",
            lambda: (hsm.info(), hsm.mechanisms(), len(hsm.objects.scan())),
        )
        if found is not None:
            self.post_message(self.Described(*found))

    def on_token_pane_described(self, message: Described) -> None:
        self._show(message.info, message.mechanisms, message.objects)

    def _show(self, i: TokenInfo, mechanisms: list[str] | None, objects: int | None) -> None:
        self.query_one("#token-info", Static).update(
            labelled(
                [
                    ("Module", i.library),
                    ("Library", i.library_version),
                    ("Slot", f"{i.slot_id} {i.slot_description}"),
                    ("Token", i.label),
                    ("Serial", i.serial),
                    ("Maker", i.manufacturer),
                    ("Model", i.model),
                    ("Firmware", i.firmware_version),
                    ("Hardware", i.hardware_version),
                    ("Logged in", "yes" if i.logged_in else "no"),
                    ("Objects", "counting…" if objects is None else objects),
                    ("Flags", ", ".join(i.flags)),
                ],
                11,
            )
        )
        self.query_one("#mechanisms", Static).update(
            plain("reading the list…")
            if mechanisms is None
            else plain(f"{len(mechanisms)}: " + ", ".join(mechanisms))
        )

    def action_reconcile(self) -> None:
        self.query_one("#reconcile", Static).update("Reconciling token and registry…")
        self.run_reconcile()

    @work(thread=True, exit_on_error=False, exclusive=True, group="reconcile")
    def run_reconcile(self) -> None:
        """Token and registry compared: interrupted work finished, differences flagged."""
        report = attempt(
            self, "Reconciliation", lambda: self.workstation.reconciler.run(actor="console")
        )
        if report is not None:
            self.post_message(Reconciled(report))

    def show_report(self, report: Report) -> None:
        text = Text()
        if report.clean:
            text.append("✓ token and registry agree", style="bold")
            text.append(f" · {report.matched} key versions matched")
        else:
            text.append(f"⚠ {len(report.findings)} findings", style="bold reverse")
            text.append(" · press a to acknowledge one (two approvers)")
        if report.completed:
            text.append(f"\nfinished {len(report.completed)} interrupted operations")
        if report.acknowledged:
            text.append(f"\n{len(report.acknowledged)} acknowledged findings hidden")
        self.query_one("#reconcile", Static).update(text)
        table = self.query_one("#findings", DataTable)
        table.clear()
        self.findings = report.findings[:SHOWN_FINDINGS]
        for n, f in enumerate(self.findings):
            table.add_row(
                plain(f.kind),
                plain(f.label or f.key_id or "—", limit=30),
                plain(f.detail, limit=80),
                key=str(n),
            )

    def action_acknowledge(self) -> None:
        table = self.query_one("#findings", DataTable)
        if not table.row_count:
            self.notify("No finding to acknowledge.", severity="warning")
            return
        if not self.allowed_here(OpKind.RECONCILE_RESOLVE):
            return
        finding = self.findings[table.cursor_row]

        def noted(note: str | None) -> None:
            if note:
                prepared = self.prepare(
                    lambda: self.workstation.prepare_acknowledge(finding.ident, note)
                )
                if prepared:
                    self.approve(prepared, then=lambda _: self.action_reconcile())

        self.app.push_screen(
            TextScreen("Acknowledge the finding: why is it expected?", "note"), noted
        )
