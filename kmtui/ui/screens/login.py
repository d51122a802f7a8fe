"""Token log-in: the PIN goes from a password field straight to the token thread."""

from __future__ import annotations

from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import BindingType
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Footer, Input, Label, Static

from kmtui.core.errors import KmtuiError
from kmtui.core.service import Workstation
from kmtui.ui.messages import LoggedIn, LoginFailed
from kmtui.ui.text import plain


class LoginScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [("escape", "app.quit", "Quit")]

    def __init__(self, workstation: Workstation) -> None:
        super().__init__()
        self.workstation = workstation

    def compose(self) -> ComposeResult:
        with Vertical(id="login-box"):
            yield Label("kmtui — log in to the token", id="login-title")
            yield Static(plain(f"Token {self.workstation.hsm.name}"), id="login-token")
            yield Input(placeholder="user PIN", password=True, id="pin")
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
        try:
            info = self.workstation.login(pin)
        except KmtuiError as exc:
            self.post_message(LoginFailed(str(exc)))
            return
        self.post_message(LoggedIn(info))

    def on_login_failed(self, message: LoginFailed) -> None:
        message.stop()
        self.query_one("#login-error", Static).update(plain(message.error, "bold"))
        pin = self.query_one("#pin", Input)
        pin.disabled = False
        pin.focus()
