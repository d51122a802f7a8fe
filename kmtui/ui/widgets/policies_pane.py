"""Policies and their effective rules; a change goes through the approval dialog."""

from __future__ import annotations

import json
from typing import Any, ClassVar

from textual.app import ComposeResult
from textual.binding import BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import DataTable, Static

from kmtui.core.control import policy
from kmtui.core.control.operations import OpKind
from kmtui.core.errors import KmtuiError
from kmtui.ui.screens.policy_edit import PolicyEditScreen
from kmtui.ui.text import labelled, plain, when
from kmtui.ui.widgets.pane import Pane, PaneBinding, cursor_kept


class PoliciesPane(Pane):
    BINDINGS: ClassVar[list[BindingType]] = [
        PaneBinding(
            "e", "edit", "Change policy", id="policies.edit", palette="change the selected policy…"
        ),
        PaneBinding("f5", "refresh", "Refresh", id="policies.refresh", show=False),
    ]

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield DataTable(id="policies", cursor_type="row")
            with VerticalScroll(id="rules-box"):
                yield Static("", id="rules")

    def on_mount(self) -> None:
        self.query_one("#policies", DataTable).add_columns("Policy", "Changed")
        self.reload()

    def reload(self) -> None:
        table = self.query_one("#policies", DataTable)
        with cursor_kept(table):
            table.clear()
            for p in self.workstation.store.policies.all():
                table.add_row(plain(p.name), plain(when(p.updated_at)), key=p.name)
        self._show()

    def _selected(self) -> str | None:
        table = self.query_one("#policies", DataTable)
        if not table.row_count:
            return None
        return str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        self._show()

    def _show(self) -> None:
        name = self._selected()
        rules = self.query_one("#rules", Static)
        if name is None:
            rules.update("")
            return
        try:
            stored = self.workstation.get_policy(name)
            effective = policy.parse(stored).to_json()
        except KmtuiError as exc:
            rules.update(plain(exc))
            return
        pairs: list[tuple[str, object]] = [
            ("policy", stored.name),
            ("description", stored.description),
            ("changed", when(stored.updated_at)),
        ]
        for k, v in effective.items():
            if isinstance(v, dict):
                pairs.append((k, "; ".join(f"{a}: {json.dumps(b)}" for a, b in v.items())))
            else:
                pairs.append((k, json.dumps(v)))
        rules.update(labelled(pairs, 24))

    def action_refresh(self) -> None:
        self.reload()

    def action_edit(self) -> None:
        name = self._selected()
        if name is None or not self.allowed_here(OpKind.POLICY_CHANGE, name):
            return
        current = self.workstation.get_policy(name)

        def edited(rules: dict[str, Any] | None) -> None:
            if rules is None:
                return
            prepared = self.prepare(lambda: self.workstation.prepare_policy_change(name, rules))
            if prepared:
                self.approve(prepared)

        self.app.push_screen(PolicyEditScreen(current), edited)
