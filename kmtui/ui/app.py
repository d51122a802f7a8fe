"""The kmtui application: log-in, then the workstation screens."""

from __future__ import annotations

import traceback

from rich.text import Text
from textual import work
from textual.app import App

from kmtui import __version__
from kmtui.config import Config
from kmtui.core.errors import KmtuiError
from kmtui.core.service import Workstation
from kmtui.paths import Paths
from kmtui.ui.messages import LoggedIn, LoginFailed
from kmtui.ui.screens.login import LoginScreen
from kmtui.ui.screens.main import MainScreen


class KmtuiApp(App[int]):
    CSS_PATH = "app.tcss"
    TITLE = "kmtui"
    ENABLE_COMMAND_PALETTE = False

    def __init__(
        self, workstation: Workstation, config: Config, *, paths: Paths, pin: str | None = None
    ) -> None:
        super().__init__()
        self.workstation = workstation
        self.config = config
        self.paths = paths
        self._pin = pin
        self.sub_title = f"v{__version__}" + (" · DEMO" if workstation.demo else "")
        if config.ui.theme in self.available_themes:
            self.theme = config.ui.theme

    def on_mount(self) -> None:
        if self._pin is not None:
            pin, self._pin = self._pin, None
            self.log_in(pin)
        else:
            self.push_screen(LoginScreen(self.workstation))

    @work(thread=True, exit_on_error=False, group="login")
    def log_in(self, pin: str) -> None:
        try:
            info = self.workstation.login(pin)
        except KmtuiError as exc:
            self.post_message(LoginFailed(str(exc)))
            return
        self.post_message(LoggedIn(info))

    def on_logged_in(self, message: LoggedIn) -> None:
        main = MainScreen(self.workstation, message.info)
        if isinstance(self.screen, LoginScreen):
            self.switch_screen(main)
        else:
            self.push_screen(main)

    def on_login_failed(self, message: LoginFailed) -> None:
        self.push_screen(LoginScreen(self.workstation))
        self.notify(message.error, severity="error", markup=False)

    def _fatal_error(self) -> None:
        """Never Textual's default crash screen: it prints local variables, which may hold a PIN."""
        self.bell()
        error = self._exception
        name = type(error).__name__ if error else "error"
        target = self.paths.log_dir / "crash.log"
        try:
            self.paths.log_dir.mkdir(parents=True, exist_ok=True)
            frames = "".join(traceback.format_tb(error.__traceback__)) if error else ""
            with target.open("a", encoding="utf-8") as fh:
                fh.write(f"--- {name}\n{frames}")
        except OSError:
            target = self.paths.log_dir
        self._exit_renderables.append(
            Text(
                f"kmtui stopped on an internal error ({name}). No secret is shown here; "
                f"the failing frames are in {target}."
            )
        )
        self._close_messages_no_wait()

    def on_unmount(self) -> None:
        if self.workstation.hsm.logged_in:
            self.workstation.logout(reason="application closed")
