"""What every pane shares: the workstation, palette entries and the way to run an approval."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, cast

from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import DataTable

from kmtui.core.errors import KmtuiError
from kmtui.service import Prepared, Workstation
from kmtui.ui.screens.approval import Runner

if TYPE_CHECKING:
    from kmtui.ui.app import KmtuiApp

T = TypeVar("T")


@contextmanager
def cursor_kept(table: DataTable[Any]) -> Iterator[None]:
    """Refill a table and leave the cursor on the same row (by key) if it is still there: after
    locking carol, the next key press must still be about carol."""
    key = None
    if table.row_count:
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
    yield
    if key is not None and key in table.rows:
        table.move_cursor(row=table.get_row_index(key))


class Pane(Vertical):
    """A tab of the main screen; PALETTE lists (title, action) for the command palette."""

    PALETTE: ClassVar[list[tuple[str, str]]] = []

    def __init__(self, workstation: Workstation, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.workstation = workstation

    @property
    def kmtui(self) -> KmtuiApp:
        from kmtui.ui.app import KmtuiApp

        return cast(KmtuiApp, self.app)

    @classmethod
    def bindings(cls) -> list[Binding]:
        return [b for b in cls.BINDINGS if isinstance(b, Binding)]

    def reload(self) -> None:
        """Show fresh data (after an operation or a reconciliation; keys also on a new theme)."""

    def prepare(self, what: Callable[[], Prepared]) -> Prepared | None:
        """Prepare on the UI thread (registry reads only); a refusal becomes a notification."""
        try:
            return what()
        except KmtuiError as exc:
            self.notify(str(exc), severity="error", markup=False, timeout=8)
            return None

    def approve(
        self,
        prepared: Prepared,
        *,
        then: Callable[[dict[str, Any]], None] | None = None,
        confirm_label: bool = False,
    ) -> None:
        """The approval dialog for an operation the gate runs (Workstation.run)."""
        self.kmtui.approve(
            prepared,
            lambda approvals: self.workstation.run(prepared, approvals),
            then=then,
            confirm_label=confirm_label,
        )

    def approve_with(
        self, prepared: Prepared, run: Runner[T], *, then: Callable[[T], None] | None = None
    ) -> None:
        """The approval dialog for an operation with its own runner (distribution, operators)."""
        self.kmtui.approve(prepared, run, then=then)
