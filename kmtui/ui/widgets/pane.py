"""What every pane shares: the workstation, keys that are also palette entries, approvals."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, cast

from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import DataTable

from kmtui.core.control.operations import OpKind
from kmtui.core.errors import KmtuiError
from kmtui.service import Executed, Prepared, Workstation
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


@dataclass(frozen=True)
class PaneBinding(Binding):
    """A pane's key and its command-palette entry in one: a key cannot miss the palette."""

    palette: str = ""
    """The palette title after the pane's name ("rotate…" in "keys: rotate…"); when empty, the
    description in lower case."""


def palette_title(binding: Binding) -> str:
    titled = binding.palette if isinstance(binding, PaneBinding) else ""
    return titled or binding.description.lower()


class Pane(Vertical):
    """A tab of the main screen; each of its BINDINGS is also a command-palette entry."""

    UNBOUND: ClassVar[list[tuple[str, str]]] = []
    """(palette title, action) of the actions a pane offers with no key of its own."""

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

    @classmethod
    def palette(cls) -> list[tuple[str, str]]:
        """(title, action) for the command palette: every binding, then the unbound actions."""
        return [(palette_title(b), b.action) for b in cls.bindings()] + cls.UNBOUND

    def reload(self) -> None:
        """Show fresh data (after an operation or a reconciliation; keys also on a new theme)."""

    def allowed_here(self, kind: OpKind, policy_name: str = "default") -> bool:
        """False, with the reason shown, for an operation the policy keeps to the console when
        the operator is not at it: asked when the key is pressed, before any form opens."""
        try:
            self.workstation.check_origin(kind, policy_name)
        except KmtuiError as exc:
            self.notify(str(exc), severity="error", markup=False, timeout=8)
            return False
        return True

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
        then: Callable[[Executed], None] | None = None,
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
