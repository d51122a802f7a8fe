"""The workstation: five panes as tabs (keys 1-5 or the mouse), a status line and the footer."""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING, ClassVar, cast

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, TabbedContent, TabPane

from kmtui.core.errors import DatabaseCorrupt, KmtuiError
from kmtui.service import Workstation
from kmtui.ui.messages import Reconciled
from kmtui.ui.widgets.audit_pane import AuditPane
from kmtui.ui.widgets.keys_pane import KeysPane
from kmtui.ui.widgets.operators_pane import OperatorsPane
from kmtui.ui.widgets.pane import Pane
from kmtui.ui.widgets.policies_pane import PoliciesPane
from kmtui.ui.widgets.status_line import StatusLine
from kmtui.ui.widgets.token_pane import TokenPane
from kmtui.ui.workers import fault

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

    class DatabaseDamaged(Message):
        def __init__(self, error: str) -> None:
            super().__init__()
            self.error = error

    class CheckUnfinished(DatabaseDamaged):
        """The full check could not run to the end (not damage: the database was busy)."""

    class DatabaseChecked(Message):
        """The full integrity check passed."""

    class RegistryChecked(Message):
        """Every sealed registry row checked against the trail and on the token."""

        def __init__(self, changed: list[str]) -> None:
            super().__init__()
            self.changed = changed

    def __init__(self, workstation: Workstation) -> None:
        super().__init__()
        self.workstation = workstation
        self._settled = False

    def compose(self) -> ComposeResult:
        yield StatusLine(id="status")
        with TabbedContent(initial="tab-keys", id="panes"):
            for n, (pane, title, cls) in enumerate(PANES, start=1):
                with TabPane(f"{n} {title}", id=f"tab-{pane}"):
                    yield cls(self.workstation, id=f"{pane}-pane")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.focus_pane("keys")
        # The objects built so far (modules, widgets, styles) live as long as the app: keep them
        # out of the collector's full passes, which otherwise take ~0.1 s on this heap.
        gc.freeze()
        # After the first frame, and after the panes' first pages (read then, on this thread).
        self.call_after_refresh(self._start_background)

    def _start_background(self) -> None:
        """Reconciliation, after the full integrity check when Store.open only ran quick_check:
        reconciliation may repair the registry, and it must not write to a damaged file."""
        if self.workstation.store.checked == "full":
            self.query_one(TokenPane).run_reconcile()
        else:
            self.check_database()

    @work(thread=True, exit_on_error=False, group="integrity")
    def check_database(self) -> None:
        """The full integrity check that the quick one at open left for now (Store.open).

        It runs beside the panes (SQLite releases the GIL while it works); should it find damage,
        the store refuses every later write and the custodian is told to restore a backup.
        """
        try:
            self.workstation.store.check(full=True)
        except DatabaseCorrupt as exc:
            self.post_message(self.DatabaseDamaged(str(exc)))
            return
        except KmtuiError as exc:  # could not check (locked, unreadable): say so, go on
            self.post_message(self.CheckUnfinished(str(exc)))
        except Exception as exc:
            fault(self, "The database's full integrity check", exc)
            return
        self.post_message(self.DatabaseChecked())

    def on_main_screen_database_checked(self, message: DatabaseChecked) -> None:
        self.query_one(TokenPane).run_reconcile()

    def on_main_screen_check_unfinished(self, message: CheckUnfinished) -> None:
        self.notify(
            f"The database's full integrity check could not finish: {message.error}",
            severity="warning",
            markup=False,
            timeout=30,
        )

    def on_main_screen_database_damaged(self, message: DatabaseDamaged) -> None:
        self.query_one(StatusLine).tick(count=False)
        self.notify(
            f"{message.error} kmtui will not write to it any more.",
            title="Database damaged",
            severity="error",
            markup=False,
            timeout=24 * 3600,
        )

    @work(thread=True, exit_on_error=False, group="registry")
    def check_registry(self) -> None:
        """Every row that decides who may do what, as kmtui last sealed it (after
        reconciliation, so it never delays it; each operation checks its own rows anyway)."""
        try:
            problems = self.workstation.seals.check_all()
        except KmtuiError as exc:
            self.post_message(self.CheckUnfinished(str(exc)))
            return
        except Exception as exc:
            fault(self, "The registry check", exc)
            return
        self.post_message(self.RegistryChecked([str(p) for p in problems]))

    def on_main_screen_registry_checked(self, message: RegistryChecked) -> None:
        self.query_one(StatusLine).tick(count=False)
        if message.changed:
            shown = "; ".join(message.changed[:3])
            more = f" (and {len(message.changed) - 3} more)" if len(message.changed) > 3 else ""
            self.notify(
                f"{shown}{more}. Every operation that uses these rows is refused. Restore the "
                "latest backup made by kmtui, or keep the files and call the security officer.",
                title="REGISTRY CHANGED OUTSIDE KMTUI",
                severity="error",
                markup=False,
                timeout=24 * 3600,
            )

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

    async def run_pane_action(self, pane: Pane, action: str) -> None:
        """A command-palette entry: show the pane, then run its action as its key would."""
        name = str(pane.id).removesuffix("-pane")
        self.action_show(name)
        await pane.run_action(action)

    def reload_all(self) -> None:
        for pane in self.panes():
            pane.reload()

    def on_reconciled(self, message: Reconciled) -> None:
        report = message.report
        cast("KmtuiApp", self.app).findings = len(report.findings)
        self.query_one(StatusLine).tick(count=False)  # now, not at the next second's tick
        if not self._settled:  # start-up is over: what it built lives on, freeze it too
            self._settled = True
            gc.freeze()
            self.check_registry()
        self.query_one(TokenPane).show_report(report)
        if not report.clean:
            self.notify(
                f"Reconciliation found {len(report.findings)} differences between token and "
                "registry: see the Token pane (5).",
                severity="warning",
                markup=False,
                timeout=10,
            )
        if report.completed:  # finished operations changed keys; findings change no key row
            self.pane("keys").reload()
