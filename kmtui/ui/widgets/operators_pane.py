"""Operators: role, state and last approval; enrolment with a QR code, lock/unlock/revoke."""

from __future__ import annotations

from typing import Any, ClassVar

from textual.app import ComposeResult
from textual.binding import BindingType
from textual.widgets import DataTable, Static

from kmtui.core.control.operations import OpKind
from kmtui.core.control.totp import Enrollment
from kmtui.core.models import OperatorState, Role
from kmtui.service import Executed
from kmtui.ui.screens.enrolment import EnrolmentScreen
from kmtui.ui.screens.forms import NamedChoiceScreen
from kmtui.ui.text import plain, when
from kmtui.ui.widgets.pane import Pane, PaneBinding, cursor_kept

STATE_STYLE = {
    OperatorState.ACTIVE: "bold",
    OperatorState.PENDING: "italic",
    OperatorState.LOCKED: "bold reverse",
    OperatorState.REVOKED: "dim strike",
}


class OperatorsPane(Pane):
    BINDINGS: ClassVar[list[BindingType]] = [
        PaneBinding("n", "enroll", "Enrol", id="operators.enroll", palette="enrol…"),
        PaneBinding("l", "lock", "Lock", id="operators.lock", palette="lock…"),
        PaneBinding("u", "unlock", "Unlock", id="operators.unlock", palette="unlock…"),
        PaneBinding("R", "revoke", "Revoke", id="operators.revoke", show=False, palette="revoke…"),
        PaneBinding("f5", "refresh", "Refresh", id="operators.refresh", show=False),
    ]

    def compose(self) -> ComposeResult:
        yield Static("", id="operators-summary", classes="pane-summary")
        yield DataTable(id="operators", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        self.query_one(DataTable).add_columns(
            "Name", "Role", "State", "Enrolled", "Failed codes", "Last approval"
        )
        self.reload()

    def reload(self) -> None:
        table = self.query_one(DataTable)
        with cursor_kept(table):
            self._fill(table)

    def _fill(self, table: DataTable[Any]) -> None:
        table.clear()
        last = self.workstation.store.reads.last_approvals()
        operators = self.workstation.operators.all()
        for o in operators:
            table.add_row(
                plain(o.name),
                plain(o.role),
                plain(o.state, STATE_STYLE.get(o.state, "")),
                plain(when(o.enrolled_at)),
                plain(o.failures),
                plain(when(last.get(o.name, "")) or "never"),
                key=o.name,
            )
        active = sum(o.state == OperatorState.ACTIVE for o in operators)
        self.query_one("#operators-summary", Static).update(
            plain(f"{len(operators)} operators, {active} active")
        )

    def _selected(self) -> str | None:
        table = self.query_one(DataTable)
        if not table.row_count:
            self.notify("No operator selected.", severity="warning")
            return None
        return str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)

    def action_refresh(self) -> None:
        self.reload()

    def _change(self, kind: OpKind) -> None:
        name = self._selected()
        if name is None:
            return
        prepared = self.prepare(lambda: self.workstation.prepare_operator(kind, name))
        if prepared:
            self.approve_with(prepared, lambda a: self.workstation.run_operator(prepared, a))

    def action_lock(self) -> None:
        self._change(OpKind.OPERATOR_LOCK)

    def action_unlock(self) -> None:
        self._change(OpKind.OPERATOR_UNLOCK)

    def action_revoke(self) -> None:
        self._change(OpKind.OPERATOR_REVOKE)

    def action_enroll(self) -> None:
        if not self.allowed_here(OpKind.OPERATOR_ENROLL):
            return

        def chosen(answer: tuple[str, str] | None) -> None:
            if answer is None:
                return
            name, role = answer
            prepared = self.prepare(
                lambda: self.workstation.prepare_operator(OpKind.OPERATOR_ENROLL, name, role)
            )
            if prepared:
                self.approve_with(
                    prepared,
                    lambda a: self.workstation.run_operator(prepared, a),
                    then=self._show_qr,
                )

        roles = [r.value for r in Role]
        self.app.push_screen(NamedChoiceScreen("Enrol an operator", roles), chosen)

    def _show_qr(self, result: tuple[Executed, Enrollment | None]) -> None:
        _, enrollment = result
        if enrollment is not None:
            self.app.push_screen(
                EnrolmentScreen(self.workstation, enrollment), lambda _: self.reload()
            )
