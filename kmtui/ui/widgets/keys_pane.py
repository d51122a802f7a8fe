"""The key registry: filter as you type, paged from SQLite, every action through one approval."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import BindingType
from textual.widgets import DataTable, Input, Static

from kmtui.core.control.lifecycle import RevocationReason
from kmtui.core.control.operations import OpKind
from kmtui.core.errors import KmtuiError
from kmtui.core.keys import components
from kmtui.core.models import Key, KeyState, iso, key_cursor, utcnow
from kmtui.core.safetext import clean
from kmtui.service import Executed, Prepared
from kmtui.ui.filters import KeyFilter
from kmtui.ui.screens.distribution import (
    ComponentsRequest,
    ComponentsScreen,
    EnterComponentsScreen,
    ExportRequest,
    ExportScreen,
    ImportRequest,
    ImportScreen,
    RevealScreen,
)
from kmtui.ui.screens.forms import ChoiceScreen, CreateKeyScreen, NewKey
from kmtui.ui.screens.key_detail import KeyDetailScreen
from kmtui.ui.text import plain, state_styles, when
from kmtui.ui.widgets.paged_table import Fetch, Page, PagedTable, Row
from kmtui.ui.widgets.pane import Pane, PaneBinding

PAGE = 100
DUE_SOON = timedelta(days=30)
COLUMNS = ("Label", "State", "Marks", "Algorithm", "KCV / fingerprint", "Policy", "Purpose", "Id")
SORTS = (
    ("label", "label"),
    ("state", "state"),
    ("algorithm", "algorithm"),
    ("policy", "policy"),
    ("created_at", "creation date"),
    ("rotation_due_at", "rotation due date"),
)
"""(store.keys.page order, words for the summary line) in the order `s` cycles through."""


class KeysPane(Pane):
    BINDINGS: ClassVar[list[BindingType]] = [
        PaneBinding("slash", "filter", "Filter", id="keys.filter"),
        PaneBinding("n", "create", "New", id="keys.create", palette="create…"),
        PaneBinding("o", "rotate", "Rotate", id="keys.rotate", palette="rotate…"),
        PaneBinding(
            "u",
            "suspend",
            "Suspend",
            id="keys.suspend",
            tooltip="Suspend or resume the key",
            palette="suspend or resume…",
        ),
        PaneBinding("v", "revoke", "Revoke", id="keys.revoke", palette="revoke…"),
        PaneBinding(
            "x",
            "schedule",
            "Destroy date",
            id="keys.schedule",
            tooltip="Schedule or cancel destruction",
            show=False,  # the footer keeps to what fits in 80 columns; `?` lists every key
            palette="schedule or cancel destruction…",
        ),
        PaneBinding("D", "destroy", "Destroy", id="keys.destroy", show=False, palette="destroy…"),
        PaneBinding("c", "check", "Self-check", id="keys.check", show=False, palette="self-check…"),
        PaneBinding("s", "sort", "Sort", id="keys.sort", show=False, palette="sort by next column"),
        PaneBinding(
            "a",
            "history",
            "Audit of key",
            id="keys.history",
            show=False,
            palette="audit history of key",
        ),
        PaneBinding("f5", "refresh", "Refresh", id="keys.refresh", show=False),
        PaneBinding(
            "e",
            "export",
            "Export",
            id="keys.export",
            show=False,
            palette="export wrapped under a trusted key…",
        ),
        PaneBinding(
            "i",
            "import_key",
            "Import",
            id="keys.import",
            show=False,
            palette="import a wrapped key file…",
        ),
        PaneBinding(
            "g",
            "components",
            "Generate as components",
            id="keys.components",
            show=False,
            palette="generate as components…",
        ),
        PaneBinding(
            "G",
            "enter_components",
            "Enter from components",
            id="keys.enter_components",
            show=False,
            palette="enter from components…",
        ),
    ]
    UNBOUND: ClassVar[list[tuple[str, str]]] = [("details", "details")]  # Enter on a row

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.key_filter = KeyFilter()
        self.sort = 0

    def compose(self) -> ComposeResult:
        yield Input(
            placeholder="filter: label prefix · state:active alg:AES policy:kek tag:pci id:k…",
            id="keys-filter",
        )
        yield Static("", id="keys-summary", classes="pane-summary")
        yield PagedTable(id="keys", page_size=PAGE)

    def on_mount(self) -> None:
        table = self.query_one(PagedTable)
        for name in COLUMNS:
            table.add_column(name, key=name.lower().split()[0])
        self.table.reload(self._fetcher(self.key_filter), now=True)  # the first page: see reload

    @property
    def table(self) -> PagedTable:
        return self.query_one(PagedTable)

    def reload(self) -> None:
        self.table.reload(self._fetcher(self.key_filter))

    def _fetcher(self, f: KeyFilter) -> Fetch:
        store = self.workstation.store
        styles = state_styles(self.app.current_theme)
        order = SORTS[self.sort][0]
        query = f.query()

        def fetch(after: Any) -> Page:
            keys = store.keys.page(after=after, limit=PAGE, order=order, **query)
            rows: list[Row] = [(key.id, row(key, styles)) for key in keys]
            return rows, (key_cursor(keys[-1], order) if len(keys) == PAGE else None)

        return fetch

    @on(Input.Changed, "#keys-filter")
    def filter_changed(self, event: Input.Changed) -> None:
        try:
            self.key_filter = KeyFilter.parse(event.value)
        except ValueError as exc:
            self.query_one("#keys-summary", Static).update(plain(exc))
            return
        self.reload()

    @on(Input.Submitted, "#keys-filter")
    def filter_done(self) -> None:
        self.table.focus()

    def on_paged_table_page_loaded(self, message: PagedTable.PageLoaded) -> None:
        self.call_after_refresh(self._summarise)

    def _summarise(self) -> None:
        table = self.table
        shown = table.row_count
        f = self.key_filter
        text = f"{shown} keys" + (" matching the filter" if f != KeyFilter() else "")
        if not table.exhausted:
            text += " so far (more load as you scroll)"
        text += f" · sorted by {SORTS[self.sort][1]}"
        self.query_one("#keys-summary", Static).update(plain(text))

    # -- the selected key ---------------------------------------------------------------------

    def selected(self) -> Key | None:
        table = self.table
        if not table.row_count:
            self.notify("No key selected.", severity="warning")
            return None
        key_id = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        key = self.workstation.store.keys.get(str(key_id))
        if key is None:
            self.notify("That key is no longer in the registry.", severity="warning")
        return key

    def action_filter(self) -> None:
        self.query_one("#keys-filter", Input).focus()

    def action_refresh(self) -> None:
        self.reload()

    def action_sort(self) -> None:
        self.sort = (self.sort + 1) % len(SORTS)
        self.reload()

    def action_details(self) -> None:
        if key := self.selected():
            self.app.push_screen(KeyDetailScreen(self.workstation, key.id))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_details()

    def action_history(self) -> None:
        if key := self.selected():
            self.kmtui.show_audit_of(key.id)

    def action_create(self) -> None:
        def chosen(new: NewKey | None) -> None:
            if new is None:
                return
            prepared = self.prepare(
                lambda: self.workstation.prepare_create(
                    label=new.label,
                    algorithm=new.algorithm,
                    purpose=new.purpose,
                    policy_name=new.policy_name,
                    exportable=new.exportable,
                )
            )
            if prepared:
                self.approve(prepared)

        self.app.push_screen(CreateKeyScreen(self.workstation), chosen)

    def _simple(self, kind: OpKind, **params: Any) -> None:
        if key := self.selected():
            prepared = self.prepare(lambda: self.workstation.prepare(kind, key.id, **params))
            if prepared:
                self.approve(prepared, confirm_label=kind == OpKind.KEY_DESTROY)

    def action_rotate(self) -> None:
        self._simple(OpKind.KEY_ROTATE)

    def action_check(self) -> None:
        """KCV or fingerprint against the registry, and a round trip the key's purpose allows."""
        key = self.selected()
        if key is None:
            return
        prepared = self.prepare(lambda: self.workstation.prepare(OpKind.KEY_SELFCHECK, key.id))
        if prepared is None:
            return

        def report(result: Executed) -> None:
            checks = result.facts.get("checks", {})
            shown = ", ".join(f"{name} {value}" for name, value in checks.items())
            self.notify(
                clean(f"Self-check of {key.label!r}: {shown}", 200),
                title="Self-check passed",
                markup=False,
                timeout=12,
            )

        self.approve(prepared, then=report)

    def action_destroy(self) -> None:
        self._simple(OpKind.KEY_DESTROY)

    def action_suspend(self) -> None:
        if key := self.selected():
            kind = OpKind.KEY_RESUME if key.state == KeyState.SUSPENDED else OpKind.KEY_SUSPEND
            self._simple(kind)

    def action_schedule(self) -> None:
        if key := self.selected():
            scheduled = key.state == KeyState.DESTROY_SCHEDULED
            self._simple(OpKind.KEY_CANCEL_DESTROY if scheduled else OpKind.KEY_SCHEDULE_DESTROY)

    def action_revoke(self) -> None:
        key = self.selected()
        if key is None or not self.allowed_here(OpKind.KEY_REVOKE, key.policy):
            return

        def chosen(reason: str | None) -> None:
            if reason:
                self._simple(OpKind.KEY_REVOKE, reason=reason)

        reasons = [r.value for r in RevocationReason]
        self.app.push_screen(ChoiceScreen("Revoke the key: why?", reasons), chosen)

    # -- keys that travel (kmtui.core.keys.distribution, through the approval dialog) ------------

    def action_export(self) -> None:
        key = self.selected()
        if key is None or not self.allowed_here(OpKind.KEY_EXPORT, key.policy):
            return
        ws = self.workstation

        def chosen(request: ExportRequest | None) -> None:
            if request is None:
                return
            prepared = self.prepare(
                lambda: ws.distribution.prepare_export(key.id, request.wrapping_key)
            )
            if prepared:
                request.out.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                self.approve_with(
                    prepared,
                    lambda a: ws.distribution.run_export(prepared, a, request.out),
                    then=lambda _: self.notify(f"Exported to {request.out}", markup=False),
                )

        out_dir = self.kmtui.paths.data_dir / "exports"
        self.app.push_screen(ExportScreen(ws, key, out_dir), chosen)

    def action_import_key(self) -> None:
        if not self.allowed_here(OpKind.KEY_IMPORT):
            return
        ws = self.workstation

        def chosen(request: ImportRequest | None) -> None:
            if request is None:
                return
            try:
                wrapped = ws.distribution.load_wrapped(request.path)
            except KmtuiError as exc:
                self.notify(str(exc), severity="error", markup=False, timeout=8)
                return
            prepared = self.prepare(
                lambda: ws.distribution.prepare_import(
                    wrapped, request.unwrapping_key, label=request.label, kcv=request.kcv
                )
            )
            if prepared:
                self.approve_with(
                    prepared, lambda a: ws.distribution.run_import(prepared, wrapped, a)
                )

        self.app.push_screen(ImportScreen(ws), chosen)

    def action_components(self) -> None:
        if not self.allowed_here(OpKind.KEY_CREATE):
            return
        ws = self.workstation

        def reveal(made: tuple[Key, list[components.Component]]) -> None:
            key, shares = made
            self.app.push_screen(RevealScreen(shares, key))

        def chosen(request: ComponentsRequest | None) -> None:
            if request is None:
                return
            prepared = self._prepare_components(request, generate=True)
            if prepared:
                self.approve_with(prepared, lambda a: ws.components.run(prepared, a), then=reveal)

        self.app.push_screen(ComponentsScreen(generate=True), chosen)

    def action_enter_components(self) -> None:
        if not self.allowed_here(OpKind.KEY_IMPORT):
            return
        ws = self.workstation

        def chosen(request: ComponentsRequest | None) -> None:
            if request is None:
                return

            def entered(shares: list[components.Component] | None) -> None:
                if not shares:
                    return
                prepared = self._prepare_components(request, generate=False)
                if prepared:
                    self.approve_with(prepared, lambda a: ws.components.run(prepared, a, shares))

            self.app.push_screen(
                EnterComponentsScreen(ws, request.custodians, request.algorithm), entered
            )

        self.app.push_screen(ComponentsScreen(generate=False), chosen)

    def _prepare_components(self, request: ComponentsRequest, *, generate: bool) -> Prepared | None:
        return self.prepare(
            lambda: self.workstation.components.prepare(
                label=request.label,
                algorithm=request.algorithm,
                purpose=request.purpose,
                custodians=request.custodians,
                generate=generate,
            )
        )

    def select_key(self, key_id: str) -> None:
        """Put the cursor on a key if it is loaded (after a jump from the audit trail)."""
        table = self.table
        if key_id in table.rows:
            table.move_cursor(row=table.get_row_index(key_id))


def marks(key: Key) -> Text:
    """Rotation due and scheduled destruction, in words as well as colour."""
    text = Text()
    now = utcnow()
    # Short, so Label to KCV fit in 80 columns; the State column already says destroy-scheduled.
    if key.state == KeyState.DESTROY_SCHEDULED and key.destroy_after:
        text.append(f"✖ on {when(key.destroy_after)[:10]}", style="bold")
    elif key.rotation_due_at and key.state in (KeyState.ACTIVE, KeyState.SUSPENDED):
        if key.rotation_due_at <= iso(now):
            text.append("⟳ rotate now", style="bold reverse")
        elif key.rotation_due_at <= iso(now + DUE_SOON):
            text.append(f"⟳ by {when(key.rotation_due_at)[:10]}", style="bold")
    return text


def row(key: Key, styles: dict[KeyState, str]) -> list[Text]:
    current = key.current
    check = (current.kcv or current.fingerprint[:23]) if current else ""
    state = KeyState(key.state)
    return [
        plain(key.label, limit=40),
        plain(state.value, styles.get(state, "")),
        marks(key),
        plain(key.algorithm),
        plain(check),
        plain(key.policy),
        plain(key.purpose),
        plain(key.id, "dim"),
    ]
