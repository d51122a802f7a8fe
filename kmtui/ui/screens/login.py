"""Token log-in, and the idle lock: two custodians each type their name and their PIN half, and
the halves go from password fields straight to the token (or the token's own PIN pad or PED)."""

from __future__ import annotations

from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Button, Footer, Input, Label, Static

from kmtui.config import TokenConfig
from kmtui.core.control.pin import (
    MAX_HALF_LENGTH,
    POSITIONS,
    PROTECTED_PATH,
    Credential,
    PinHalves,
    ProtectedPath,
)
from kmtui.core.errors import KmtuiError
from kmtui.service import Workstation
from kmtui.ui.messages import LoginFailed
from kmtui.ui.text import plain
from kmtui.ui.widgets.secret_input import SecretInput
from kmtui.ui.workers import log_in


class LoginScreen(Screen[None]):
    """Also the lock screen (locked=True): a full screen, so nothing of the workstation shows."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "app.quit", "Quit", id="login.quit")]

    def __init__(
        self,
        workstation: Workstation,
        token: TokenConfig | None = None,
        *,
        locked: bool = False,
        hint: str = "",
    ) -> None:
        super().__init__()
        self.workstation = workstation
        self.token = token or TokenConfig()
        self.protected = self.token.login == PROTECTED_PATH
        self.locked = locked
        self.hint = hint

    def compose(self) -> ComposeResult:
        title = "kmtui — locked (idle): log in again" if self.locked else "kmtui — log in"
        with Vertical(id="login-box"):
            yield Label(title, id="login-title")
            yield Static(plain(f"Token {self.workstation.hsm.name}"), id="login-token")
            if self.protected:
                yield Static(
                    "The token authenticates on its own PIN pad, PED or quorum cards: start "
                    "the log-in, then follow the token's prompts.",
                    id="login-how",
                )
                yield Button("Log in at the token", id="protected", variant="primary")
            else:
                yield Static(
                    "Two custodians, each with their own half of the user PIN.", id="login-how"
                )
                for n, position in enumerate(POSITIONS, 1):
                    with Horizontal(classes="half-row"):
                        yield Label(f"{position} half", classes="half-label")
                        yield Input(placeholder="holder's name", id=f"holder-{n}", max_length=32)
                        yield SecretInput(
                            placeholder="half (hidden)",
                            id=f"half-{n}",
                            max_length=MAX_HALF_LENGTH,
                        )
            yield Static(plain(self.hint), id="login-hint")
            yield Static("", id="login-error")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#protected" if self.protected else "#holder-1").focus()

    @on(Input.Submitted)
    def next_field(self, event: Input.Submitted) -> None:
        """Enter moves on to the next empty field; with all four filled, it logs in."""
        fields = list(self.query(Input))
        empty = [f for f in fields if not f.value]
        if empty:
            later = [f for f in empty if fields.index(f) > fields.index(event.input)]
            (later or empty)[0].focus()
            return
        try:
            halves = PinHalves.of(
                [(self._value(f"#holder-{n}").strip(), self._value(f"#half-{n}")) for n in (1, 2)],
                minimum=self.token.pin_half_min_length,
            )
        except KmtuiError as exc:
            self._clear_halves()
            self._show_error(str(exc))
            return
        self._clear_halves()
        self.start(halves)

    @on(Button.Pressed, "#protected")
    def protected_login(self) -> None:
        self.start(ProtectedPath())

    def _value(self, selector: str) -> str:
        return self.query_one(selector, Input).value

    def _clear_halves(self) -> None:
        for n in (1, 2):
            self.query_one(f"#half-{n}", Input).value = ""

    def start(self, credential: Credential) -> None:
        for widget in (*self.query(Input), *self.query(Button)):
            widget.disabled = True
        self.query_one("#login-error", Static).update("Logging in…")
        self.log_in(credential)

    @work(thread=True, exit_on_error=False, group="login")
    def log_in(self, credential: Credential) -> None:
        log_in(self, self.workstation, credential)

    def _show_error(self, error: str) -> None:
        self.query_one("#login-error", Static).update(plain(error, "bold"))

    def on_login_failed(self, message: LoginFailed) -> None:
        message.stop()
        self._show_error(message.error)
        for widget in (*self.query(Input), *self.query(Button)):
            widget.disabled = False
        if self.protected:
            self.query_one("#protected").focus()
        else:
            self.query_one("#half-1").focus()
