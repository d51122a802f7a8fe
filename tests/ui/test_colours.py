"""Every shipped theme stays legible over SSH with 256 or 16 colours.

Textual composes the screen in truecolor; Rich turns each colour into the nearest one the terminal
has only when the screen is written out (Strip.render -> Color.downgrade). Rich picks the colour
system from the environment: COLORTERM=truecolor|24bit gives truecolor, else a TERM ending in
-256color gives 256 colours, and any other TERM (xterm, linux, screen, vt100) gives 16;
TEXTUAL_COLOR_SYSTEM=standard|256|truecolor overrides both. These tests render the real app on a
real token, downgrade every rendered cell the way Rich does and look at the result through the
palettes a custodian's terminal would use.
"""

from __future__ import annotations

import tomllib
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import textual.constants
from rich._palettes import EIGHT_BIT_PALETTE, STANDARD_PALETTE
from rich.cells import cell_len
from rich.color import Color, ColorSystem, ColorType
from rich.color_triplet import ColorTriplet
from rich.palette import Palette
from rich.style import Style
from textual.app import App
from textual.errors import NoWidget
from textual.pilot import Pilot
from textual.screen import ModalScreen
from textual.widgets import Button, Static

from kmtui.core.control.operations import OpKind
from kmtui.core.control.pin import PinHalves
from kmtui.core.models import KeyState, iso, utcnow
from kmtui.service import Workstation
from kmtui.ui import themes
from kmtui.ui.app import KmtuiApp
from kmtui.ui.screens.approval import ApprovalScreen
from kmtui.ui.screens.login import LoginScreen
from kmtui.ui.text import plain
from kmtui.ui.widgets.paged_table import PagedTable
from tests.conftest import SoftHsm, Team, sealed_edit
from tests.ui.helpers import app_for, keys_loaded, main_ready, until

SIZE = (120, 36)
SHIPPED = ("kmtui-dark", "kmtui-light", "kmtui-projector")

MIN_CONTRAST = 3.0
"""WCAG 2's floor for large text and user-interface parts (SC 1.4.3, 1.4.11). Terminal text is not
large, but 16 colours cannot promise body text's 4.5:1 for every pair: the Linux console's dark
grey on black is 2.8:1, which is where "dimmer" turns into "hard to read" on a projector."""

XTERM_16 = Palette(
    [
        (0, 0, 0),
        (205, 0, 0),
        (0, 205, 0),
        (205, 205, 0),
        (0, 0, 238),
        (205, 0, 205),
        (0, 205, 205),
        (229, 229, 229),
        (127, 127, 127),
        (255, 0, 0),
        (0, 255, 0),
        (255, 255, 0),
        (92, 92, 255),
        (255, 0, 255),
        (0, 255, 255),
        (255, 255, 255),
    ]
)
"""xterm's own colours 0-15: what TERM=xterm over SSH shows unless the user changed them."""


@dataclass(frozen=True)
class Terminal:
    name: str
    system: ColorSystem
    palette: Palette | None  # None: truecolor, shown as composed


TERMINALS = (
    Terminal("truecolor", ColorSystem.TRUECOLOR, None),
    # Colours 16-255 are the same on every terminal; Rich never picks 0-15 when downgrading.
    Terminal("256 colours", ColorSystem.EIGHT_BIT, EIGHT_BIT_PALETTE),
    # Rich matches against the VGA colours, which the Linux console (TERM=linux) really shows.
    Terminal("16 colours, Linux console palette", ColorSystem.STANDARD, STANDARD_PALETTE),
    Terminal("16 colours, xterm palette", ColorSystem.STANDARD, XTERM_16),
)


# -- what the terminal shows ----------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One rendered segment's visible text and style, and where it is on the screen."""

    scene: str
    x: int
    y: int
    text: str
    style: Style
    backdrop: bool  # under a dialog's translucent backdrop: faded on purpose


def is_text(char: str) -> bool:
    """Letters, digits, punctuation and symbols; not box drawing or block elements (borders,
    scroll bars, tab underlines, button edges), which are faint by design."""
    if not char.strip() or "\u2500" <= char <= "\u259f":
        return False
    return unicodedata.category(char)[0] in "LNPS"


def rendered(app: App[Any], scene: str) -> list[Run]:
    """Every segment of the screen as the terminal receives it (what export_screenshot renders)."""
    screen = app.screen
    update = screen._compositor.render_update(full=True, screen_stack=app._background_screens)
    runs: list[Run] = []
    for y, line in enumerate(update.strips):
        x = 0
        for strip in line:
            for text, style, control in strip:
                if control:
                    continue
                if any(is_text(c) for c in text):
                    at = x + cell_len(text) - cell_len(text.lstrip())
                    faded = under_backdrop(app, at, y)
                    runs.append(Run(scene, at, y, text.strip(), style or Style(), faded))
                x += cell_len(text)
    return runs


def under_backdrop(app: App[Any], x: int, y: int) -> bool:
    screen = app.screen
    if not isinstance(screen, ModalScreen):
        return False
    try:
        return screen.get_widget_at(x, y)[0] is screen
    except NoWidget:
        return True


def shown(color: Color, terminal: Terminal) -> tuple[int | None, ColorTriplet]:
    """The colour number the terminal gets (None in truecolor) and the colour it then shows."""
    down = color.downgrade(terminal.system)
    if terminal.palette is None or down.number is None:
        return None, down.get_truecolor()
    return down.number, terminal.palette[down.number]


def luminance(rgb: Sequence[int]) -> float:
    def channel(value: int) -> float:
        c = value / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    red, green, blue = (channel(v) for v in rgb)
    return 0.2126 * red + 0.7152 * green + 0.0722 * blue


def contrast(a: Sequence[int], b: Sequence[int]) -> float:
    """WCAG 2 contrast ratio: 1 (same colour) to 21 (black on white)."""
    light, dark = sorted((luminance(a), luminance(b)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def faint(fg: Sequence[int], bg: Sequence[int]) -> ColorTriplet:
    """SGR 2 as most terminals draw it, half way to the background (Textual usually blends dim
    text itself, so the terminal rarely gets it)."""
    red, green, blue = (round((f + b) / 2) for f, b in zip(fg, bg, strict=True))
    return ColorTriplet(red, green, blue)


@dataclass(frozen=True)
class Look:
    """How a run's text looks on one terminal, and how it looked as composed."""

    fg: int | None
    bg: int | None
    fg_rgb: ColorTriplet
    bg_rgb: ColorTriplet
    ratio: float
    truecolor_ratio: float
    pair: str

    @property
    def same(self) -> bool:
        """The same colour number, or in truecolor the same colour."""
        return self.fg == self.bg if self.fg is not None else self.fg_rgb == self.bg_rgb


def look(style: Style, terminal: Terminal) -> Look | None:
    """None when a colour is left to the terminal's default (nothing to measure)."""
    fg, bg = style.color, style.bgcolor
    if style.reverse:
        fg, bg = bg, fg
    if fg is None or bg is None or ColorType.DEFAULT in (fg.type, bg.type):
        return None
    (fg_n, fg_rgb), (bg_n, bg_rgb) = shown(fg, terminal), shown(bg, terminal)
    true_fg, true_bg = fg.get_truecolor(), bg.get_truecolor()
    if style.dim:
        fg_rgb, true_fg = faint(fg_rgb, bg_rgb), faint(true_fg, true_bg)
    true_ratio = contrast(true_fg, true_bg)
    pair = f"{true_fg.hex} on {true_bg.hex} (truecolor {true_ratio:.2f})"
    if fg_n is not None:
        pair += f" shows as {fg_n} on {bg_n}"
    return Look(fg_n, bg_n, fg_rgb, bg_rgb, contrast(fg_rgb, bg_rgb), true_ratio, pair)


def problems(runs: list[Run], terminal: Terminal) -> list[str]:
    """What a custodian could not read: one line per colour pair, with where it was seen. Text
    under a dialog's backdrop is faded on purpose: it only has to stay visible."""
    found: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        seen = look(run.style, terminal)
        if seen is None:
            found.setdefault(("colour left to the terminal", str(run.style)), []).append(run)
        elif seen.same:
            found.setdefault(("text and background the same colour", seen.pair), []).append(run)
        elif seen.ratio < MIN_CONTRAST and not run.backdrop:
            why = f"contrast {seen.ratio:.2f} < {MIN_CONTRAST}"
            found.setdefault((why, seen.pair), []).append(run)
    return [
        f"{terminal.name}: {why}: {pair}: "
        + ", ".join(f"{r.scene} {r.text[:24]!r} at {r.x},{r.y}" for r in where[:3])
        + (f" and {len(where) - 3} more" if len(where) > 3 else "")
        for (why, pair), where in found.items()
    ]


def looks_alike(states: dict[KeyState, Run], terminal: Terminal) -> list[str]:
    """States whose words are drawn the same way (colour and attributes): only the word tells."""
    by_look: dict[tuple[object, ...], list[str]] = {}
    for state, run in states.items():
        seen = look(run.style, terminal)
        colour = None if seen is None else seen.fg if seen.fg is not None else seen.fg_rgb
        s = run.style
        by_look.setdefault(
            (colour, s.bold, s.dim, s.italic, s.underline, s.strike, s.reverse), []
        ).append(state.value)
    return [
        f"{terminal.name}: {' and '.join(same)} look alike"
        for same in by_look.values()
        if len(same) > 1
    ]


# -- the scenes: the real app on the real token ---------------------------------------------------

STATE_KEYS = {
    "k1": KeyState.ACTIVE,
    "k2": KeyState.SUSPENDED,
    "k3": KeyState.COMPROMISED,
    "k4": KeyState.DEACTIVATED,
    "k5": KeyState.DESTROY_SCHEDULED,
    "k6": KeyState.DESTROYED,
    "k7": KeyState.PRE_ACTIVATION,
    "k8": KeyState.QUARANTINED,
    "k9": KeyState.DESTROYED_COMPROMISED,
}
"""One key per state; k0 (active, rotation overdue) sits under the table's cursor."""


def keys_in_every_state(team: Team) -> None:
    ws = team.ws
    long_ago = iso(utcnow().replace(year=2000))

    def key(label: str, *steps: tuple[OpKind, dict[str, str]]) -> str:
        made = ws.create_key(label=label, algorithm="AES-256", approvals=team.codes("alice", "bob"))
        for kind, params in steps:
            ws.run(ws.prepare(kind, made.id, **params), team.codes("alice", "bob"))
        return made.id

    overdue = key("k0")
    key("k1")
    key("k2", (OpKind.KEY_SUSPEND, {}))
    key("k3", (OpKind.KEY_REVOKE, {"reason": "key-compromise"}))
    key("k4", (OpKind.KEY_REVOKE, {"reason": "superseded"}))
    key("k5", (OpKind.KEY_SUSPEND, {}), (OpKind.KEY_SCHEDULE_DESTROY, {}))
    doomed = key("k6", (OpKind.KEY_SUSPEND, {}), (OpKind.KEY_SCHEDULE_DESTROY, {}))
    sealed_edit(
        ws, f"key:{doomed}", "UPDATE keys SET destroy_after = ? WHERE id = ?", (long_ago, doomed)
    )
    ws.run(ws.prepare(OpKind.KEY_DESTROY, doomed), team.codes("alice", "bob"))
    # States reached only through a token fault or a long wait: set in the registry.
    for label in ("k7", "k8", "k9"):
        row = key(label)
        sealed_edit(
            ws, f"key:{row}", "UPDATE keys SET state = ? WHERE id = ?", (STATE_KEYS[label], row)
        )
    sealed_edit(
        ws,
        f"key:{overdue}",
        "UPDATE keys SET rotation_due_at = ? WHERE id = ?",
        (long_ago, overdue),
    )


@dataclass
class Rendered:
    scenes: dict[str, list[Run]] = field(default_factory=dict)
    states: dict[KeyState, Run] = field(default_factory=dict)
    """The State cell of each key in STATE_KEYS."""

    @property
    def runs(self) -> list[Run]:
        return [run for runs in self.scenes.values() for run in runs]


async def settle(pilot: Pilot[Any]) -> None:
    await pilot.pause(0.3)


async def login_scenes(app: KmtuiApp, pilot: Pilot[Any], seen: Rendered) -> None:
    await until(
        pilot,
        lambda: isinstance(app.screen, LoginScreen) and app.screen.query("#half-2"),
        "the log-in screen",
    )
    await settle(pilot)
    seen.scenes["login"] = rendered(app, "login")
    await pilot.press(*"alice", "tab", *"1234")
    app.screen.query_one("#login-error", Static).update(plain("The PIN was not accepted.", "bold"))
    await settle(pilot)
    seen.scenes["login error"] = rendered(app, "login error")


async def keys_scene(app: KmtuiApp, pilot: Pilot[Any], seen: Rendered) -> None:
    await main_ready(pilot)
    await keys_loaded(pilot, len(STATE_KEYS) + 1)
    await settle(pilot)
    seen.scenes["keys"] = keys = rendered(app, "keys")
    table = app.screen.query_one("#keys", PagedTable)
    row_of = {table.get_row_at(i)[0].plain: i for i in range(table.row_count)}
    top = table.region.y + table.header_height - table.scroll_offset.y
    for label, state in STATE_KEYS.items():
        y = top + row_of[label]
        seen.states.update((state, r) for r in keys if r.y == y and r.text == state.value)


async def main_scenes(app: KmtuiApp, pilot: Pilot[Any], seen: Rendered) -> None:
    """Each pane, a focused filter, notifications of each severity and the approval dialog."""
    ws = app.workstation
    await keys_scene(app, pilot, seen)
    for number, pane in enumerate(("policies", "audit", "operators", "token"), start=2):
        await pilot.press(str(number))
        await settle(pilot)
        seen.scenes[pane] = rendered(app, pane)
    await pilot.press("3", "slash", *"op:alice")
    await settle(pilot)
    seen.scenes["audit filter"] = rendered(app, "audit filter")
    app.notify("An information notification")
    app.notify("A warning notification", severity="warning")
    app.notify("An error notification", severity="error")
    await settle(pilot)
    seen.scenes["notifications"] = rendered(app, "notifications")
    app.clear_notifications()
    prepared = ws.prepare(OpKind.KEY_ROTATE, ws.get_key("k1").id)
    app.approve(prepared, lambda approvals: ws.run(prepared, approvals))
    await until(
        pilot,
        lambda: isinstance(app.screen, ApprovalScreen) and app.screen.query("#approve"),
        "the approval dialog",
    )
    await pilot.press(*"alice", "enter", "1", "2")
    app.screen.query_one("#approve", Button).press()  # refused: a code is six digits
    await settle(pilot)
    seen.scenes["approval"] = rendered(app, "approval")


async def render(theme: str, team: Team, halves: PinHalves, tmp_path: Path) -> Rendered:
    """The theme on the log-in screen, then on the workstation with keys in every state."""
    keys_in_every_state(team)
    seen = Rendered()
    login = app_for(team.ws, tmp_path / "login", None)
    login.theme = theme
    async with login.run_test(size=SIZE) as pilot:
        await login_scenes(login, pilot, seen)
    app = app_for(team.ws, tmp_path / "main", halves)
    app.theme = theme
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await main_scenes(app, pilot, seen)
    assert all(seen.scenes.values()), "a scene rendered no text"
    assert "An error notification" in [r.text for r in seen.scenes["notifications"]]
    return seen


# -- the checks -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environment", "expected"),
    [
        ({"TERM": "xterm"}, "standard"),
        ({"TERM": "linux"}, "standard"),
        ({"TERM": "screen"}, "standard"),
        ({"TERM": "xterm-256color"}, "256"),
        ({"TERM": "screen-256color"}, "256"),
        ({"TERM": "tmux-256color"}, "256"),
        ({"TERM": "xterm-256color", "COLORTERM": "truecolor"}, "truecolor"),
        ({"TERM": "xterm", "COLORTERM": "24bit"}, "truecolor"),
        ({"TERM": "xterm-256color", "COLORTERM": "truecolor", "force": "standard"}, "standard"),
    ],
)
def test_the_terminal_decides_how_many_colours_the_app_writes(
    environment: dict[str, str],
    expected: str,
    workstation: Workstation,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("COLORTERM", raising=False)
    # TEXTUAL_COLOR_SYSTEM is read once, when Textual is imported.
    monkeypatch.setattr(textual.constants, "COLOR_SYSTEM", environment.pop("force", "auto"))
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    app = app_for(workstation, tmp_path, None)
    assert app.console.color_system == expected


@pytest.mark.parametrize("theme", SHIPPED)
async def test_every_screen_stays_legible_and_key_states_distinct_in_256_and_16_colours(
    theme: str, team: Team, softhsm_token: SoftHsm, tmp_path: Path
) -> None:
    seen = await render(theme, team, softhsm_token.halves, tmp_path)
    assert sorted(seen.states) == sorted(STATE_KEYS.values()), "every state is shown by its word"
    found = [
        line
        for terminal in TERMINALS
        for line in problems(seen.runs, terminal) + looks_alike(seen.states, terminal)
    ]
    assert not found, f"{theme}:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("base", "colours", "expected"),
    [
        # Amber on white reads well in truecolor (4.9:1) but is xterm's yellow at 16 colours.
        (
            "kmtui-light",
            {"warning": "#9a5b00", "accent": "#9a5b00"},
            "16 colours, xterm palette: contrast 1.70 < 3.0: #9a5b00 on",
        ),
        # A green and an amber that both round to the same grey at 16 colours.
        (
            "kmtui-dark",
            {"success": "#6cc68a", "warning": "#e0b45c"},
            "16 colours, xterm palette: active and suspended look alike",
        ),
    ],
)
async def test_a_colour_that_only_fails_in_16_colours_is_caught(
    base: str,
    colours: dict[str, str],
    expected: str,
    team: Team,
    softhsm_token: SoftHsm,
    tmp_path: Path,
) -> None:
    data = tomllib.loads((themes.SHIPPED_DIR / f"{base}.toml").read_text(encoding="utf-8"))
    bad = themes.parse(data | colours | {"name": "bad"})
    keys_in_every_state(team)
    seen = Rendered()
    app = app_for(team.ws, tmp_path, softhsm_token.halves)
    app.register_theme(bad)
    app.theme = bad.name
    async with app.run_test(size=SIZE) as pilot:
        await keys_scene(app, pilot, seen)
    truecolor = problems(seen.runs, TERMINALS[0]) + looks_alike(seen.states, TERMINALS[0])
    found = [
        line
        for terminal in TERMINALS
        for line in problems(seen.runs, terminal) + looks_alike(seen.states, terminal)
    ]
    assert not truecolor
    assert any(line.startswith(expected) for line in found), "\n".join(found)
