"""The kmtui application: log-in, the workstation screens, themes, keymap and the idle lock."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import ClassVar, TypeVar

from rich.text import Text
from textual import events, work
from textual.app import App
from textual.binding import Binding, BindingType
from textual.command import Provider

from kmtui import __version__, crashlog
from kmtui.config import Config, remember_theme, remembered_theme
from kmtui.core.control.pin import Credential
from kmtui.core.errors import KmtuiError
from kmtui.core.models import TokenInfo
from kmtui.paths import Paths
from kmtui.service import Prepared, Workstation
from kmtui.ui import themes
from kmtui.ui.commands import KmtuiCommands
from kmtui.ui.messages import LoggedIn, LoginFailed, WorkFailed
from kmtui.ui.screens.approval import ApprovalScreen, Runner
from kmtui.ui.screens.help import HelpScreen
from kmtui.ui.screens.login import LoginScreen
from kmtui.ui.screens.main import PANES, MainScreen
from kmtui.ui.screens.transcript import TranscriptScreen
from kmtui.ui.widgets.audit_pane import AuditPane
from kmtui.ui.widgets.status_line import StatusLine
from kmtui.ui.workers import attempt, log_in

ACTIVITY = (events.Key, events.MouseDown, events.MouseScrollDown, events.MouseScrollUp)
T = TypeVar("T")


class KmtuiApp(App[int]):
    CSS_PATH = "app.tcss"
    TITLE = "kmtui"
    COMMANDS: ClassVar[set[type[Provider] | Callable[[], type[Provider]]]] = {KmtuiCommands}
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f1", "help", "Help", id="app.help", show=False),
        Binding("ctrl+l", "lock", "Lock now", id="app.lock", show=False),
    ]

    def __init__(
        self,
        workstation: Workstation,
        config: Config,
        *,
        paths: Paths,
        login: Credential | None = None,
    ) -> None:
        super().__init__()
        self.workstation = workstation
        self.config = config
        self.paths = paths
        self._login = login  # given: the demo's halves or --pin-halves-from; else the screen asks
        self.sub_title = f"v{__version__}" + (" · DEMO" if workstation.demo else "")
        self.token_label = ""
        self.token_info: TokenInfo | None = None  # as read at log-in, for the Token pane
        self.findings: int | None = None
        self.chain_status = ""
        self.locked = False
        self.idle_seconds = config.ui.idle_lock_minutes * 60
        self.idle_source = "configuration"
        self.last_activity = time.monotonic()
        self.session_started = time.monotonic()
        self.session_approvals_since = 0
        loaded = themes.load(themes.SHIPPED_DIR, paths.user_themes_dir)
        for theme in loaded.themes:
            self.register_theme(theme)
        self.theme_problems = loaded.problems
        wanted = remembered_theme(paths.state_dir) or config.ui.theme
        if wanted not in self.available_themes:
            self.theme_problems.append(f"theme {wanted!r} is not available")
            wanted = themes.DEFAULT_THEME
        if wanted in self.available_themes:
            self.theme = wanted
        self.set_keymap(dict(config.ui.bindings))

    # -- start, log-in, lock, end of session ------------------------------------------------

    def action_end_session(self) -> None:
        """Quit through the ceremony transcript (signed on the token) when logged in; at once when
        locked, as the lock screen's Escape does (the transcript would show what the lock hides)."""
        if self.locked or not self.workstation.hsm.logged_in:
            self.exit()
            return

        def done(quit_now: bool | None) -> None:
            if quit_now:
                self.exit()

        self.push_screen(
            TranscriptScreen(
                self.workstation, self.session_since, self.paths.data_dir / "transcripts"
            ),
            done,
        )

    def on_mount(self) -> None:
        newest = self.workstation.audit.events(limit=1)
        self.session_since = newest[0].seq if newest else 0  # the transcript starts here
        # the status line's "present": who approved after this approval
        self.session_approvals_since = self.workstation.store.reads.last_approval_id()
        self.apply_idle_lock()
        if self.theme_problems:
            self.notify(
                "Some themes could not be used (kmtui falls back to its default):\n"
                + "\n".join(self.theme_problems),
                severity="warning",
                markup=False,
                timeout=15,
            )
        self.set_interval(1, self.lock_if_idle)
        if self._login is not None:
            login, self._login = self._login, None
            self.log_in(login)
        else:
            self.push_screen(LoginScreen(self.workstation, self.config.token))

    @work(thread=True, exit_on_error=False, group="login")
    def log_in(self, credential: Credential) -> None:
        log_in(self, self.workstation, credential)

    def on_logged_in(self, message: LoggedIn) -> None:
        self.token_label = message.info.label
        self.token_info = message.info
        self.last_activity = time.monotonic()
        if self.locked:
            self.locked = False
            self.pop_screen()
            self.notify("Unlocked.", markup=False)
        elif isinstance(self.screen, LoginScreen):
            self.switch_screen(MainScreen(self.workstation))
        else:
            self.push_screen(MainScreen(self.workstation))

    def on_login_failed(self, message: LoginFailed) -> None:
        self.push_screen(LoginScreen(self.workstation, self.config.token))
        self.notify(message.error, severity="error", markup=False)

    async def on_event(self, event: events.Event) -> None:
        if isinstance(event, ACTIVITY):
            self.last_activity = time.monotonic()
        await super().on_event(event)

    def apply_idle_lock(self) -> None:
        """The shortest of the configured idle lock and every policy's; says so when a policy
        change made it shorter."""
        try:
            minutes, source = self.workstation.idle_lock(self.config.ui.idle_lock_minutes)
        except KmtuiError as exc:
            self.notify(f"Could not read the policies' idle lock: {exc}", markup=False)
            return
        if minutes * 60 != self.idle_seconds:
            if minutes * 60 < self.idle_seconds and self.main_screen() is not None:
                self.notify(
                    f"The idle lock is now {minutes} minutes ({source}).",
                    markup=False,
                )
            self.idle_seconds, self.idle_source = minutes * 60, source

    def idle_remaining(self) -> float:
        return max(0.0, self.idle_seconds - (time.monotonic() - self.last_activity))

    def lock_if_idle(self) -> None:
        if not self.locked and self.main_screen() is not None and self.idle_remaining() <= 0:
            self.action_lock()

    def action_lock(self) -> None:
        """Hide everything behind the log-in screen (two PIN halves) and log out of the token."""
        if self.locked or self.main_screen() is None:
            return
        self.locked = True
        hint = ""
        if self.workstation.demo:
            hint = f"Demo: both halves are in {self.paths.data_dir / 'demo-pin-halves'}"
        self.push_screen(LoginScreen(self.workstation, self.config.token, locked=True, hint=hint))
        self.log_out()

    @work(thread=True, exit_on_error=False, group="login")
    def log_out(self) -> None:
        attempt(self, "Logging out", lambda: self.workstation.logout(reason="idle lock"))

    def on_work_failed(self, message: WorkFailed) -> None:
        """Every failed piece of background work ends here; a fault in kmtui goes to crash.log too,
        as the app's own crashes do, while the app carries on."""
        text = f"{message.what} failed: {message.error}"
        if message.fault is None:
            self.notify(text, severity="error", markup=False)
            return
        where = crashlog.write(self.paths.log_dir, message.fault) or self.paths.log_dir
        self.notify(
            f"{text}. This is a fault in kmtui; no secret is shown here, the failing frames are "
            f"in {where}.",
            severity="error",
            markup=False,
            timeout=30,
        )

    # -- what the panes and the palette use ---------------------------------------------------

    def main_screen(self) -> MainScreen | None:
        return next((s for s in self.screen_stack if isinstance(s, MainScreen)), None)

    def approve(
        self,
        prepared: Prepared,
        run: Runner[T],
        *,
        then: Callable[[T], None] | None = None,
        confirm_label: bool = False,
    ) -> None:
        """The one approval dialog; every pane reloads after the operation ran."""

        def finished(result: T | None) -> None:
            if result is None:
                return
            main = self.main_screen()
            if main is not None:
                main.reload_all()
                main.query_one(StatusLine).count_pending()  # who is present, at once
            self.apply_idle_lock()
            if then is not None:
                then(result)

        self.push_screen(ApprovalScreen(prepared, run, confirm_label=confirm_label), finished)

    def show_audit_of(self, key_id: str) -> None:
        main = self.main_screen()
        if main is not None:
            main.action_show("audit")
            main.query_one(AuditPane).filter_text(f"key:{key_id}")

    def use_theme(self, name: str) -> None:
        """Switch theme now and remember it for the next start."""
        self.theme = name
        try:
            remember_theme(self.paths.state_dir, name)
        except OSError as exc:
            self.notify(f"Could not remember the theme: {exc.strerror}", severity="warning")
        main = self.main_screen()
        if main is not None:
            main.pane("keys").reload()  # the only pane whose cells take the theme's colours

    def action_help(self) -> None:
        sections: list[tuple[str, list[Binding]]] = [
            (
                "Everywhere",
                [b for b in (*self.BINDINGS, *MainScreen.BINDINGS) if isinstance(b, Binding)]
                + [Binding(self.COMMAND_PALETTE_BINDING, "command_palette", "Command palette")],
            )
        ]
        for _, title, cls in PANES:
            sections.append((f"{title} pane", cls.bindings()))
        self.push_screen(HelpScreen(sections, dict(self.config.ui.bindings)))

    # -- safety ---------------------------------------------------------------------------------

    def _fatal_error(self) -> None:
        """Never Textual's default crash screen: it prints local variables, which may hold a PIN."""
        self.bell()
        error = self._exception
        name = type(error).__name__ if error else "error"
        written = crashlog.write(self.paths.log_dir, error) if error else None
        target = written or self.paths.log_dir
        self._exit_renderables.append(
            Text(
                f"kmtui stopped on an internal error ({name}). No secret is shown here; "
                f"the failing frames are in {target}."
            )
        )
        self._close_messages_no_wait()

    def on_unmount(self) -> None:
        try:
            self.workstation.logout(reason="application closed")
        except KmtuiError as exc:
            self._exit_renderables.append(Text(f"Logging out of the token at exit failed: {exc}"))
