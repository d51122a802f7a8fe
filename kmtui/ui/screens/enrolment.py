"""A new operator scans the QR code, then proves it with their first code."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from kmtui.core.control.totp import Enrollment
from kmtui.core.errors import KmtuiError
from kmtui.service import Workstation
from kmtui.ui.screens.approval import CODE
from kmtui.ui.text import plain
from kmtui.ui.widgets.secret_input import SecretInput
from kmtui.ui.workers import fault


class EnrolmentScreen(ModalScreen[bool]):
    """Dismissed with True once the operator's first code confirmed the enrolment."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Close (not confirmed)", id="enrol.cancel"),
    ]

    class Confirmed(Message):
        pass

    class Rejected(Message):
        def __init__(self, error: str) -> None:
            super().__init__()
            self.error = error

    def __init__(self, workstation: Workstation, enrollment: Enrollment) -> None:
        super().__init__()
        self.workstation = workstation
        self.operator_name = enrollment.name
        self._qr = enrollment.qr_text

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="enrol-box"):
            yield Label(plain(f"Enrol {self.operator_name}: scan this with the authenticator app"))
            yield Static(Text(self._qr, no_wrap=True), id="qr")
            yield Static(
                "Only the new operator looks at this code; it is shown once and never stored "
                "in the clear.",
                classes="form-hint",
            )
            yield SecretInput(
                placeholder="first code from the app",
                max_length=6,
                restrict=r"[0-9]*",
                id="first-code",
            )
            yield Static("", classes="form-error")
            with Horizontal(classes="form-buttons"):
                yield Button("Confirm", id="confirm", variant="primary")
                yield Button("Close", id="close")

    def on_mount(self) -> None:
        self.query_one("#first-code", Input).focus()

    def action_cancel(self) -> None:
        self._qr = ""
        self.dismiss(False)

    @on(Button.Pressed, "#close")
    def closed(self) -> None:
        self.action_cancel()

    @on(Button.Pressed, "#confirm")
    @on(Input.Submitted)
    def confirm(self) -> None:
        code_input = self.query_one("#first-code", Input)
        code, code_input.value = code_input.value, ""
        if not CODE.fullmatch(code):
            self.query_one(".form-error", Static).update("The code is exactly six digits.")
            return
        self._confirm(code)

    @work(thread=True, exit_on_error=False, group="enrol")
    def _confirm(self, code: str) -> None:
        try:
            self.workstation.confirm_operator(self.operator_name, code)
        except KmtuiError as exc:
            self.post_message(self.Rejected(str(exc)))
        except Exception as exc:
            self.post_message(self.Rejected(fault(self, "Confirming the enrolment", exc)))
        else:
            self.post_message(self.Confirmed())

    def on_enrolment_screen_confirmed(self) -> None:
        self._qr = ""
        self.app.notify(plain(f"{self.operator_name} is enrolled and active.").plain, markup=False)
        self.dismiss(True)

    def on_enrolment_screen_rejected(self, message: Rejected) -> None:
        self.query_one(".form-error", Static).update(plain(message.error))
