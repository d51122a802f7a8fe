"""Golden snapshots of the main screens: every cell's text and style, volatile values masked.

Each test builds the same workstation on a token of its own (keys in every state, operators in
four states, a changed policy and an audit trail, all made through the service with real
approvals), drives the app to one screen and compares a rendering of that screen with
tests/ui/snapshots/<name>.txt. Each screen line is stored as its text followed by its style runs
(colours and attributes), so a changed label, layout or colour fails with a unified diff.

Values that differ from run to run are replaced by placeholders of the same length before the
comparison, so the layout stays comparable: key ids (k##########02, numbered in KEYS order), check
values (kcv2.1: key 2, version 1), fingerprints, the token's serial, label and slot, the approval
digest, the idle-lock and session countdowns, and dates, which become days from the test's day
(today+7___ hh:mm). Nothing else is masked, and a volatile value left unmasked fails the test
rather than making it flaky.

Regenerate after an intended change, then read the diff of the golden files before committing:

    KMTUI_SNAPSHOT_UPDATE=1 .venv/bin/python -m pytest tests/ui/test_snapshots.py
"""

from __future__ import annotations

import difflib
import os
import re
import secrets
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from rich.color import Color
from rich.style import Style
from textual.app import App
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, Static

from kmtui.core.control.operations import ApprovalInput, OpKind
from kmtui.core.control.pin import PinHalves
from kmtui.core.errors import ApproversRefused
from kmtui.core.models import Key, KeyState, iso, utcnow
from kmtui.core.registry.db import Store
from kmtui.core.token.session import Hsm, on_hsm_thread
from kmtui.service import Workstation
from kmtui.ui.screens.approval import ApprovalScreen
from kmtui.ui.screens.help import HelpScreen
from kmtui.ui.screens.key_detail import KeyDetailScreen
from kmtui.ui.screens.login import LoginScreen
from kmtui.ui.screens.main import MainScreen
from kmtui.ui.widgets import keys_pane
from kmtui.ui.widgets.keys_pane import KeysPane
from kmtui.ui.widgets.paged_table import PagedTable
from tests.conftest import Clock, SoftHsm, Team, init_token_in_process, sealed_edit
from tests.ui.helpers import app_for, main_ready, text_of, until

SNAPSHOTS = Path(__file__).parent / "snapshots"
UPDATE_ENV = "KMTUI_SNAPSHOT_UPDATE"
UPDATE_COMMAND = f"{UPDATE_ENV}=1 .venv/bin/python -m pytest tests/ui/test_snapshots.py"
WIDE, SMALL = (120, 36), (80, 24)
HALVES = PinHalves.of([("alice", "snap-half-one"), ("bob", "snap-half-two")])
SO_PIN = "snap-so-pin"
DIFF_LINES = 60
PAGE = 100  # the panes' page size: the audit pane shows the first page until scrolled

# -- a token of the test's own ------------------------------------------------------------------


# -- the fixed data set -------------------------------------------------------------------------

KEYS = (
    # label, algorithm, purpose, policy, exportable: the numbers in the id placeholders follow
    # this order (k##########01 is payments-kek).
    ("payments-kek", "AES-256", "wrap", "kek", False),
    ("orders-dek", "AES-256", "encrypt", "default", False),
    ("tokens-mac", "HMAC-SHA256", "mac", "default", False),
    ("legacy-dek", "AES-128", "encrypt", "default", False),
    ("leaked-dek", "AES-128", "encrypt", "default", False),
    ("retired-sig", "EC-P256", "sign", "signing", False),
    ("shredded-dek", "AES-256", "encrypt", "default", False),
    ("stale-mac", "HMAC-SHA256", "mac", "default", False),
    ("partner-dek", "AES-256", "encrypt", "exportable-dek", True),
)


@dataclass
class Fixed:
    ws: Workstation
    token_label: str
    serial: str
    slot: int
    keys: dict[str, Key]
    day: date
    extra: dict[str, str] = field(default_factory=dict)
    """Further volatile values a test met on screen (a digest), each with its placeholder."""


def build(ws: Workstation, team: Team) -> dict[str, Key]:
    """Operators in four states, keys in every state a custodian meets, a changed policy."""
    team.enroll("alice", "custodian")
    team.enroll("bob", "custodian")
    team.enroll("carol", "officer", ("alice", "bob"))
    team.enroll("dave", "auditor", ("alice", "bob"))
    ws.run_operator(ws.prepare_operator(OpKind.OPERATOR_LOCK, "dave"), team.codes("alice", "carol"))
    pending = ws.prepare_operator(OpKind.OPERATOR_ENROLL, "erin", "custodian")
    ws.run_operator(pending, team.codes("bob", "carol"))  # erin never scans her QR code

    rules = dict(ws.get_policy("exportable-dek").rules, rotation_days=20)
    ws.run(ws.prepare_policy_change("exportable-dek", rules), team.codes("alice", "bob"))

    keys: dict[str, Key] = {}
    for label, algorithm, purpose, policy_name, exportable in KEYS:
        keys[label] = ws.create_key(
            label=label,
            algorithm=algorithm,
            purpose=purpose,
            policy_name=policy_name,
            exportable=exportable,
            approvals=team.codes("alice", "bob"),
        )

    def run(label: str, kind: OpKind, *names: str, **params: object) -> None:
        ws.run(ws.prepare(kind, keys[label].id, **params), team.codes(*names) if names else ())

    run("orders-dek", OpKind.KEY_ROTATE, "alice", "bob")
    run("tokens-mac", OpKind.KEY_SUSPEND)
    run("legacy-dek", OpKind.KEY_REVOKE, "bob", "carol", reason="superseded")
    run("leaked-dek", OpKind.KEY_REVOKE, "alice", "carol", reason="key-compromise")
    run("retired-sig", OpKind.KEY_SCHEDULE_DESTROY, "alice", "bob")
    run("shredded-dek", OpKind.KEY_SCHEDULE_DESTROY, "alice", "bob")
    # Waiting out a destroy period or a cryptoperiod is no test's business: move those dates.
    past = iso(utcnow() - timedelta(days=1))
    for column, label in (("destroy_after", "shredded-dek"), ("rotation_due_at", "stale-mac")):
        row = keys[label].id
        sealed_edit(ws, f"key:{row}", f"UPDATE keys SET {column} = ? WHERE id = ?", (past, row))
    run("shredded-dek", OpKind.KEY_DESTROY, "alice", "bob")
    run("payments-kek", OpKind.KEY_SELFCHECK)

    alice, bob = team.codes("alice", "bob")
    wrong = ApprovalInput("bob", "000000" if bob.code != "000000" else "111111")
    with pytest.raises(ApproversRefused):  # bob mistypes: a refusal in the trail, one failure
        ws.run(ws.prepare(OpKind.KEY_ROTATE, keys["payments-kek"].id), [alice, wrong])
    return {label: ws.get_key(key.id) for label, key in keys.items()}


@pytest.fixture
def fixed(softhsm_token: SoftHsm, tmp_path: Path) -> Iterator[Fixed]:
    """The same workstation for every snapshot, on a fresh token (so reconciliation is clean)."""
    label = f"snap-{secrets.token_hex(4)}"  # labels pick the token: one of its own per test
    on_hsm_thread(init_token_in_process, softhsm_token.module, label, SO_PIN, HALVES.pin())
    hsm = Hsm(softhsm_token.module, token_label=label, softhsm2_conf=str(softhsm_token.conf))
    info = hsm.login(HALVES.pin())
    store = Store.open(tmp_path / "kmtui.db")
    clock = Clock()
    day = datetime.now(UTC).date()
    ws = Workstation.assemble(hsm, store, clock=clock)
    try:
        keys = build(ws, Team(ws, clock, {}))
        yield Fixed(ws, label, info.serial, info.slot_id, keys, day)
    finally:
        store.close()
        hsm.close()


# -- rendering a screen as text and style runs -------------------------------------------------


def _colour(colour: Color | None) -> str:
    if colour is None:
        return "-"
    return colour.triplet.hex if colour.triplet else colour.name


FLAGS = (("b", "bold"), ("d", "dim"), ("i", "italic"), ("u", "underline"), ("r", "reverse"))


def _style(style: Style | None) -> str:
    if style is None:
        return "-/-"
    flags = "".join(c for c, name in (*FLAGS, ("s", "strike")) if getattr(style, name))
    return f"{_colour(style.color)}/{_colour(style.bgcolor)}" + (f" {flags}" if flags else "")


def screen_lines(app: App[object]) -> list[list[tuple[str, str]]]:
    """(text, style) segments per line, as Textual paints them (modal screens over their
    background), the same render that App.export_screenshot turns into an SVG."""
    update = app.screen._compositor.render_update(
        full=True, screen_stack=app._background_screens, simplify=True
    )
    return [
        [(seg.text, _style(seg.style)) for strip in strips for seg in strip]
        for strips in update.strips  # type: ignore[union-attr]
    ]


Mask = tuple[re.Pattern[str], Callable[[re.Match[str]], str]]


def _fit(value: str, placeholder: str) -> str:
    """The placeholder cut or padded to the value's length, so the layout stays comparable."""
    return placeholder[: len(value)].ljust(len(value), "#")


def masks(fixed: Fixed, dates: bool = True) -> list[Mask]:
    """Only what changes from run to run, each to a placeholder of the same length."""
    found: list[Mask] = []

    def exact(value: str, placeholder: str, flags: int = 0, shortest: int = 0) -> None:
        """The value, or a prefix of it down to `shortest` chars (a cell cut at its width)."""
        prefixes = [value[:n] for n in range(len(value), (shortest or len(value)) - 1, -1)]
        alternatives = "|".join(re.escape(p) for p in prefixes)
        pattern = re.compile(
            rf"(?:(?<=%3A)|(?<![0-9A-Za-z]))(?:{alternatives})(?![0-9A-Za-z])", flags
        )
        found.append((pattern, lambda m: _fit(m.group(), placeholder)))

    exact(fixed.token_label, "snap-########")
    exact(fixed.serial, "#" * len(fixed.serial), shortest=6)
    for n, key in enumerate(fixed.keys.values(), start=1):
        exact(key.id, f"k{'#' * (len(key.id) - 3)}{n:02d}", shortest=6)
        for v in key.versions:
            if v.kcv:  # kcv2.1: key 2, version 1
                exact(v.kcv, f"kcv{n}.{v.version}", re.IGNORECASE)
    for value, placeholder in fixed.extra.items():
        exact(value, placeholder)
    found.append(
        (re.compile(r"SHA256:[0-9a-f]+"), lambda m: "SHA256:" + "#" * (len(m.group()) - 7))
    )
    hashes = re.compile(r"\d")
    for countdown in (r"(?<=lock in )\d+:\d\d", r"(?<=session )\d+(?:h\d\d|m)"):
        found.append((re.compile(countdown), lambda m: hashes.sub("#", m.group())))
    # SoftHSM numbers slots in the order tokens were made in this process (test order).
    slot = re.compile(rf"\b{fixed.slot} SoftHSM slot ID 0x{fixed.slot:x}\b *")
    found.append((slot, lambda m: "N SoftHSM slot ID 0xN".ljust(len(m.group()))))
    if dates:

        def relative(m: re.Match[str]) -> str:
            days = (date.fromisoformat(m.group(1)) - fixed.day).days
            shown = f"today{days:+d}" if days else "today"
            return shown.ljust(10, "_") + (" hh:mm" if m.group(2) else "")

        found.append((re.compile(r"(\d{4}-\d{2}-\d{2})( \d{2}:\d{2})?(?!\d)"), relative))
        found.append((re.compile(r"(?<=hh:mm):\d\d"), lambda m: ":ss"))  # the audit detail
    # An event's hash, shortened to 16 hex digits and an ellipsis (the audit pane's detail).
    found.append((re.compile(r"\b[0-9a-f]{16}(?=…)"), lambda m: "#" * 16))
    return found


def leaks(text: str, fixed: Fixed, dates: bool = True) -> list[str]:
    """Volatile values still on the masked screen: they would make the golden file flaky."""
    values = [fixed.token_label, fixed.serial[:8], *fixed.extra]
    values += [key.id[1:8] for key in fixed.keys.values()]
    found = [v for v in values if v.casefold() in text.casefold()]
    kcvs = {v.kcv.casefold() for key in fixed.keys.values() for v in key.versions if v.kcv}
    found += [w for w in re.findall(r"[0-9a-f]{6}", text, re.I) if w.casefold() in kcvs]
    if dates:
        found += re.findall(r"\d{4}-\d\d-\d", text)
    return found


def snapshot_text(app: App[object], rules: list[Mask]) -> str:
    width, height = app.size
    out = [
        f"# {type(app.screen).__name__} at {width}x{height}",
        "# each line: its text between | |, then its style runs 'start+length fg/bg flags'",
        "# (flags: b bold, d dim, i italic, u underline, r reverse, s strike)",
    ]
    for y, segments in enumerate(screen_lines(app)):
        text = "".join(t for t, _ in segments)
        shown = text
        for pattern, replace in rules:
            shown = pattern.sub(replace, shown)
        assert len(shown) == len(text), (text, shown)
        runs: list[tuple[int, int, str]] = []
        x = 0
        for part, style in segments:
            if runs and runs[-1][2] == style:
                runs[-1] = (runs[-1][0], runs[-1][1] + len(part), style)
            elif part:
                runs.append((x, len(part), style))
            x += len(part)
        out.append(f"{y:3d} |{shown}|")
        out.append("    " + " · ".join(f"{a}+{n} {s}" for a, n, s in runs))
    return "\n".join(out) + "\n"


async def settled(pilot: Pilot, rules: list[Mask]) -> str:
    """The screen once two renders in a row agree (no page, toast or animation in flight)."""
    app = pilot.app
    app.clear_notifications()  # toasts time out: they belong to flows, not to a screen's look
    for widget in app.screen.query(Input):
        widget.cursor_blink = False  # a steady cursor, drawn where it is
    previous = ""
    for _ in range(100):
        await pilot.pause(0.05)
        current = snapshot_text(app, rules)
        if current == previous:
            return current
        previous = current
    raise AssertionError("the screen kept changing")


def mismatch(name: str, expected: str, actual: str) -> str:
    """'' when equal, else a unified diff of the first differing lines."""
    if actual == expected:
        return ""
    diff = list(
        difflib.unified_diff(
            expected.splitlines(),
            actual.splitlines(),
            f"golden/{name}.txt",
            f"actual/{name}.txt",
            n=1,
            lineterm="",
        )
    )
    return "\n".join(diff[:DIFF_LINES]) + ("\n…" if len(diff) > DIFF_LINES else "")


def check(name: str, expected: str, actual: str, tmp_path: Path) -> None:
    """Fail with a unified diff of the first differing lines (the whole rendering kept)."""
    diff = mismatch(name, expected, actual)
    if diff:
        (tmp_path / f"{name}.txt").write_text(actual, encoding="utf-8")
        pytest.fail(
            f"Screen {name!r} differs from its golden snapshot (the whole rendering is in "
            f"{tmp_path / (name + '.txt')}):\n{diff}\nIf the change is intended: {UPDATE_COMMAND}",
            pytrace=False,
        )


def compare(name: str, actual: str, tmp_path: Path) -> None:
    golden = SNAPSHOTS / f"{name}.txt"
    if os.environ.get(UPDATE_ENV) == "1":
        SNAPSHOTS.mkdir(exist_ok=True)
        golden.write_text(actual, encoding="utf-8")
        return
    if not golden.exists():
        pytest.fail(
            f"No golden snapshot tests/ui/snapshots/{name}.txt: create it with\n"
            f"    {UPDATE_COMMAND}\nthen review the new file before committing it.",
            pytrace=False,
        )
    check(name, golden.read_text(encoding="utf-8"), actual, tmp_path)


# -- driving the app to each screen ------------------------------------------------------------


async def loaded(pilot: Pilot, fixed: Fixed) -> MainScreen:
    """The main screen with reconciliation done and every pane showing the final data."""
    main = await main_ready(pilot)
    main.reload_all()  # the panes' first pages may predate reconciliation's audit events
    keys = main.query_one("#keys", PagedTable)
    audit = main.query_one("#audit", PagedTable)
    events = min(len(fixed.ws.audit.events(limit=PAGE + 1)), PAGE)
    await until(pilot, lambda: keys.row_count == len(fixed.keys) and keys.exhausted, "the keys")
    await until(pilot, lambda: audit.row_count == events, "the audit trail")
    info = main.query_one("#token-info", Static)
    await until(
        pilot,
        lambda: "Objects" in text_of(info) and "counting" not in text_of(info),
        "the token information",
    )
    status = main.query_one("#status", Static)
    await until(pilot, lambda: "reconciling" not in str(status.render()), "the status line")
    return main


async def select(pilot: Pilot, fixed: Fixed, label: str) -> KeysPane:
    await loaded(pilot, fixed)
    keys = pilot.app.screen.query_one(KeysPane)
    keys.select_key(fixed.keys[label].id)
    table = keys.table
    await until(
        pilot, lambda: table.get_row_at(table.cursor_row)[0].plain == label, f"{label} selected"
    )
    return keys


Drive = Callable[[Pilot, Fixed], Awaitable[None]]


async def snapshot(
    fixed: Fixed,
    tmp_path: Path,
    drive: Drive,
    size: tuple[int, int] = WIDE,
    login: PinHalves | None = HALVES,
    dates: bool = True,
) -> str:
    """Run the app on the fixed workstation, drive it to a screen, return the masked render."""
    app = app_for(fixed.ws, tmp_path, login)
    async with app.run_test(size=size) as pilot:
        app.animation_level = "none"  # the tabs' underline slides otherwise
        await drive(pilot, fixed)
        text = await settled(pilot, masks(fixed, dates))
    left = leaks(text, fixed, dates)
    assert not left, f"volatile values left unmasked (add a mask for them): {left}"
    return text


def pane(key: str) -> Drive:
    async def drive(pilot: Pilot, fixed: Fixed) -> None:
        # The cursor row hides its cells' colours: put it on a row whose colours repeat below.
        await select(pilot, fixed, "payments-kek")
        await pilot.press(key)

    return drive


# -- the snapshots -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "key", "size"),
    [
        ("keys-120x36", "1", WIDE),
        ("keys-80x24", "1", SMALL),
        ("policies-120x36", "2", WIDE),
        ("audit-120x36", "3", WIDE),
        ("operators-120x36", "4", WIDE),
        ("token-120x36", "5", WIDE),
    ],
)
async def test_each_pane_matches_its_golden_snapshot(
    name: str, key: str, size: tuple[int, int], fixed: Fixed, tmp_path: Path
) -> None:
    compare(name, await snapshot(fixed, tmp_path, pane(key), size), tmp_path)


async def test_key_detail_matches_its_golden_snapshot(fixed: Fixed, tmp_path: Path) -> None:
    async def drive(pilot: Pilot, fixed: Fixed) -> None:
        await select(pilot, fixed, "orders-dek")
        await pilot.press("enter")
        app = pilot.app
        await until(pilot, lambda: isinstance(app.screen, KeyDetailScreen), "the key detail")
        history = app.screen.query_one("#detail-history", DataTable)
        await until(pilot, lambda: history.row_count > 0, "the key's data")

    compare("key-detail-120x36", await snapshot(fixed, tmp_path, drive), tmp_path)


async def test_approval_dialog_matches_its_golden_snapshot(fixed: Fixed, tmp_path: Path) -> None:
    """A rotation prepared and waiting for its two approvers (not run)."""

    async def drive(pilot: Pilot, fixed: Fixed) -> None:
        await select(pilot, fixed, "orders-dek")
        await pilot.press("o")
        app = pilot.app
        await until(
            pilot,
            lambda: isinstance(app.screen, ApprovalScreen) and app.screen.query("#approve"),
            "the approval dialog",
        )
        assert isinstance(app.screen, ApprovalScreen)
        digest = app.screen.prepared.operation.short_digest
        fixed.extra[digest] = "#" * len(digest)

    compare("approval-120x36", await snapshot(fixed, tmp_path, drive), tmp_path)
    assert fixed.ws.get_key(fixed.keys["orders-dek"].id).current_version == 2


async def test_login_screen_matches_its_golden_snapshot(fixed: Fixed, tmp_path: Path) -> None:
    fixed.ws.logout(reason="before the login screen")

    async def drive(pilot: Pilot, fixed: Fixed) -> None:
        app = pilot.app
        await until(pilot, lambda: isinstance(app.screen, LoginScreen), "the login screen")

    compare("login-120x36", await snapshot(fixed, tmp_path, drive, login=None), tmp_path)


async def test_help_screen_matches_its_golden_snapshot(fixed: Fixed, tmp_path: Path) -> None:
    async def drive(pilot: Pilot, fixed: Fixed) -> None:
        await loaded(pilot, fixed)
        await pilot.press("question_mark")
        app = pilot.app
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), "the help screen")

    # The help text's dates are examples of the filter syntax, not volatile: left unmasked.
    text = await snapshot(fixed, tmp_path, drive, dates=False)
    compare("help-120x36", text, tmp_path)


# -- the snapshots can fail ----------------------------------------------------------------------


async def test_a_changed_state_colour_or_label_fails_the_comparison_with_a_diff(
    fixed: Fixed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The keys pane drawn three times: as it is, with suspended in plain bold (the word
    still there, its colour gone), and with a label one letter off; each must not compare equal."""
    rules = masks(fixed)
    app = app_for(fixed.ws, tmp_path, HALVES)
    async with app.run_test(size=WIDE) as pilot:
        app.animation_level = "none"
        keys = await select(pilot, fixed, "payments-kek")
        baseline = await settled(pilot, rules)

        async def redrawn() -> str:
            keys.reload()
            await until(pilot, lambda: snapshot_text(app, rules) != baseline, "the change")
            return await settled(pilot, rules)

        styles = keys_pane.state_styles

        def colourless(theme: object) -> dict[KeyState, str]:
            return {**styles(theme), KeyState.SUSPENDED: "bold"}  # type: ignore[arg-type]

        monkeypatch.setattr(keys_pane, "state_styles", colourless)
        recoloured = await redrawn()
        monkeypatch.setattr(keys_pane, "state_styles", styles)
        tokens_mac = fixed.keys["tokens-mac"].id
        sealed_edit(
            fixed.ws,
            f"key:{tokens_mac}",
            "UPDATE keys SET label = ? WHERE id = ?",
            ("tokens-mak", tokens_mac),
        )
        relabelled = await redrawn()

    colour_diff = mismatch("keys-120x36", baseline, recoloured)
    changed = [line for line in colour_diff.splitlines()[2:] if line[:1] in "+-"]
    # One line's style runs changed (tokens-mac's state), not a single character of text.
    assert [line[:5] for line in changed] == ["-    ", "+    "], colour_diff

    label_diff = mismatch("keys-120x36", baseline, relabelled)
    assert any(line.startswith("-") and "tokens-mac" in line for line in label_diff.splitlines())
    assert any(line.startswith("+") and "tokens-mak" in line for line in label_diff.splitlines())
    for changed_screen in (recoloured, relabelled):
        with pytest.raises(pytest.fail.Exception, match="differs from its golden snapshot"):
            check("keys-120x36", baseline, changed_screen, tmp_path)
    print(f"colour regression:\n{colour_diff}\n\nlabel regression:\n{label_diff}")
