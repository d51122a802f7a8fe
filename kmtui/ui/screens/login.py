"""Token log-in, and the idle lock: the PIN goes from a password field straight to the token."""

from __future__ import annotations

from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Footer, Input, Label, Static

from kmtui.service import Workstation
from kmtui.ui.messages import LoginFailed
from kmtui.ui.text import plain
from kmtui.ui.widgets.secret_input import SecretInput
from kmtui.ui.workers import log_in


class LoginScreen(Screen[None]):
    """Also the lock screen (locked=True): a full screen, so nothing of the workstation shows."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "app.quit", "Quit", id="login.quit")]
    AUTO_FOCUS = "#pin"

    def __init__(self, workstation: Workstation, *, locked: bool = False, hint: str = "") -> None:
        super().__init__()
        self.workstation = workstation
        self.locked = locked
        self.hint = hint

    def compose(self) -> ComposeResult:
        title = "kmtui — locked (idle): log in again" if self.locked else "kmtui — log in"
        with Vertical(id="login-box"):
            yield Label(title, id="login-title")
            yield Static(plain(f"Token {self.workstation.hsm.name}"), id="login-token")
            yield SecretInput(placeholder="user PIN", id="pin")
            yield Static(plain(self.hint), id="login-hint")
            yield Static("", id="login-error")
        yield Footer()

    @on(Input.Submitted, "#pin")
    def submitted(self, event: Input.Submitted) -> None:
        pin, event.input.value = event.value, ""
        if not pin:
            return
        event.input.disabled = True
        self.query_one("#login-error", Static).update("Logging in…")
        self.log_in(pin)

    @work(thread=True, exit_on_error=False, group="login")
    def log_in(self, pin: str) -> None:
        log_in(self, self.workstation, pin)

    def on_login_failed(self, message: LoginFailed) -> None:
        message.stop()
        self.query_one("#login-error", Static).update(plain(message.error, "bold"))
        pin = self.query_one("#pin", Input)
        pin.disabled = False
        pin.focus()
