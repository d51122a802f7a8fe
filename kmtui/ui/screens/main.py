"""The workstation: five panes as tabs (keys 1-5 or the mouse), a status line and the footer."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, cast

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import Footer, TabbedContent, TabPane

from kmtui.core.service import Workstation
from kmtui.ui.messages import Reconciled
from kmtui.ui.widgets.audit_pane import AuditPane
from kmtui.ui.widgets.keys_pane import KeysPane
from kmtui.ui.widgets.operators_pane import OperatorsPane
from kmtui.ui.widgets.pane import Pane
from kmtui.ui.widgets.policies_pane import PoliciesPane
from kmtui.ui.widgets.status_line import StatusLine
from kmtui.ui.widgets.token_pane import TokenPane

if TYPE_CHECKING:
    from kmtui.ui.app import KmtuiApp

PANES = (
    ("keys", "Keys", KeysPane),
    ("policies", "Policies", PoliciesPane),
    ("audit", "Audit", AuditPane),
    ("operators", "Operators", OperatorsPane),
    ("token", "Token", TokenPane),
)


class MainScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        *(
            Binding(str(n), f"show('{pane}')", title, id=f"pane.{pane}", show=False)
            for n, (pane, title, _) in enumerate(PANES, start=1)
        ),
        Binding("question_mark", "app.help", "Help", id="app.help_key"),
        Binding("q", "app.end_session", "Quit", id="app.quit"),
    ]

    def __init__(self, workstation: Workstation) -> None:
        super().__init__()
        self.workstation = workstation

    def compose(self) -> ComposeResult:
        yield StatusLine(id="status")
        with TabbedContent(initial="tab-keys", id="panes"):
            for n, (pane, title, cls) in enumerate(PANES, start=1):
                with TabPane(f"{n} {title}", id=f"tab-{pane}"):
                    yield cls(self.workstation, id=f"{pane}-pane")
        yield Footer()

    def on_mount(self) -> None:
        self.focus_pane("keys")
        # Reconciliation holds the GIL for a while on a large registry: let the first pages of
        # the panes paint before it starts (it runs in a worker either way).
        self.set_timer(0.3, self.query_one(TokenPane).run_reconcile)

    def panes(self) -> list[Pane]:
        return list(self.query(Pane))

    def pane(self, name: str) -> Pane:
        return self.query_one(f"#{name}-pane", Pane)

    def action_show(self, name: str) -> None:
        self.query_one(TabbedContent).active = f"tab-{name}"
        self.focus_pane(name)

    def focus_pane(self, name: str) -> None:
        pane = self.pane(name)
        target = pane.query("DataTable").first() if pane.query("DataTable") else pane
        target.focus()
        self.call_after_refresh(target.focus)  # a pane shown in this same refresh

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if event.pane.id:
            self.focus_pane(event.pane.id.removeprefix("tab-"))

    def run_pane_action(self, pane: Pane, action: str) -> None:
        """A command-palette entry: show the pane, then run its action."""
        name = str(pane.id).removesuffix("-pane")
        self.action_show(name)
        getattr(pane, f"action_{action}")()

    def reload_all(self) -> None:
        for pane in self.panes():
            pane.reload()

    def on_reconciled(self, message: Reconciled) -> None:
        report = message.report
        cast("KmtuiApp", self.app).findings = len(report.findings)
        self.query_one(TokenPane).show_report(report)
        if not report.clean:
            self.notify(
                f"Reconciliation found {len(report.findings)} differences between token and "
                "registry: see the Token pane (5).",
                severity="warning",
                markup=False,
                timeout=10,
            )
        self.pane("keys").reload()
