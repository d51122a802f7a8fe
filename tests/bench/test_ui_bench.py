"""The TUI at scale: 100,000 keys and 1,000,000 audit events against a bare Textual app.

Run with `make bench`. The measuring runs in a fresh interpreter (this module run with -m), so
its peak memory (VmHWM) is the app's alone, and the bare app (an empty DataTable, started with
run_test the same way) is timed in that same process and run. The database is built once per
size and generator and cached under the temp dir (see tests/ui/scale_data.py);
KMTUI_BENCH_KEYS and KMTUI_BENCH_EVENTS shrink it for a quick try.

The store is opened as `kmtui` opens it for the TUI (quick_check, then the full integrity check
in the background while the panes load and the keys are typed), and both checks are also timed
on their own. Each figure in BOUNDS must stay within its bound (see there what each rests on).
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual.app import App, ComposeResult
from textual.widgets import DataTable, Input, Static

from tests.conftest import SoftHsm
from tests.ui import scale_data

pytestmark = pytest.mark.bench
KEYS = int(os.environ.get("KMTUI_BENCH_KEYS", "100000"))
EVENTS = int(os.environ.get("KMTUI_BENCH_EVENTS", "1000000"))
SIZE = (100, 30)
BARE_ROUNDS = 3
MEASURES = 3  # runs of the whole measurement, each in a fresh interpreter
TYPED = ("orders-0001", "tag:rare", "alg:EC")
PANES = ("keys", "policies", "audit", "operators", "token")
GOAL_RATIO, GOAL_KEYSTROKE_MS, GOAL_PEAK_MB = 1.3, 50.0, 200.0
# The panes do not meet GOAL_RATIO yet (1.6-2.8x the bare app measured, log-in left out): each
# is fenced at the worst figure the project documents, the token object count's 3.7-3.9x.
PANE_BOUND = 4.0
BOUNDS = {
    "first_frame_without_login_ratio": GOAL_RATIO,  # 0.98x (median of 3; single runs to 1.4x)
    **{f"{pane}_first_page_without_login_ratio": PANE_BOUND for pane in PANES},
    "token_objects_counted_without_login_ratio": PANE_BOUND,
    "keystroke_ms_median": GOAL_KEYSTROKE_MS,  # measured 30-39 ms
    "peak_mb": GOAL_PEAK_MB,  # measured 96 MB
}


def bench(row: dict[str, Any]) -> None:
    print("BENCH " + json.dumps(row, sort_keys=True), flush=True)


class Bare(App[None]):
    def compose(self) -> ComposeResult:
        yield DataTable()


async def wait_for(condition: Callable[[], object], timeout: float = 60) -> float:
    """Seconds until condition holds, polled every millisecond or so."""
    began = time.perf_counter()
    while not condition():
        if time.perf_counter() - began > timeout:
            raise AssertionError(f"timed out waiting for {condition}")
        await asyncio.sleep(0.001)
    return time.perf_counter() - began


async def bare_start() -> float:
    began = time.perf_counter()
    app = Bare()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(lambda: app.query(DataTable))
        await pilot.pause()
        return time.perf_counter() - began


async def measure(db: Path, home: Path, token: dict[str, str]) -> dict[str, Any]:
    from kmtui.config import Config
    from kmtui.core.control.pin import Credential, PinHalves
    from kmtui.core.registry.db import Store
    from kmtui.core.token.session import Hsm
    from kmtui.paths import under
    from kmtui.service import Workstation
    from kmtui.ui.app import KmtuiApp
    from kmtui.ui.filters import KeyFilter
    from kmtui.ui.screens.main import MainScreen
    from kmtui.ui.widgets.keys_pane import PAGE
    from kmtui.ui.widgets.paged_table import PagedTable
    from tests.ui.helpers import text_of

    bare = [await bare_start() for _ in range(BARE_ROUNDS)]
    began = time.perf_counter()
    store = Store.open(db, integrity="quick")  # as `kmtui` opens it for the TUI (cli.cmd_tui)
    store_open = time.perf_counter() - began
    hsm = Hsm(token["module"], token_label=token["label"], softhsm2_conf=token["conf"])
    ws = Workstation.assemble(hsm, store)
    # The copy's rows sealed as its first log-in seals them (once in a registry's life: the
    # figures are of every later start).
    hsm.login(PinHalves.of([tuple(pair) for pair in token["halves"]]).pin())
    ws.seals.start("bench")
    hsm.logout()
    figures: dict[str, Any] = {"bare_start_s": statistics.median(bare), "store_open_s": store_open}
    login = ws.login

    def timed_login(credential: Credential, actor: str = "console") -> Any:
        started = time.perf_counter()
        try:
            return login(credential, actor)
        finally:
            figures["token_login_s"] = time.perf_counter() - started

    ws.login = timed_login  # type: ignore[method-assign]
    check = store.check

    def timed_check(*, full: bool = True) -> None:
        check(full=full)
        figures["full_check_done_s"] = time.perf_counter() - began

    store.check = timed_check  # type: ignore[method-assign]
    policies = len(store.policies.all())
    began = time.perf_counter()
    halves = PinHalves.of([tuple(pair) for pair in token["halves"]])
    app = KmtuiApp(ws, Config(), paths=under(home), login=halves)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(lambda: isinstance(app.screen, MainScreen) and app.screen.query("#keys"))
        figures["first_frame_s"] = time.perf_counter() - began
        screen = app.screen
        keys = screen.query_one("#keys", PagedTable)

        def static(selector: str) -> str:  # '' until the pane holding it is mounted
            found = screen.query(selector)
            return str(found.first(Static).content) if found else ""

        def rows(selector: str) -> int:
            found = screen.query(selector)
            return found.first(DataTable).row_count if found else -1

        # What each pane shows first: a full page, every policy, the operator count, the token.
        first: dict[str, Callable[[], bool]] = {
            "keys": lambda: keys.row_count == PAGE,
            "policies": lambda: rows("#policies") == policies,
            "audit": lambda: rows("#audit") == PAGE,
            "operators": lambda: bool(static("#operators-summary")),
            "token": lambda: static("#token-info") not in ("", "Reading the token…"),
        }
        pending = dict(first)

        def pane_shown(name: str) -> bool:
            if name in pending and pending[name]():
                figures[f"{name}_first_page_s"] = time.perf_counter() - began
                del pending[name]
            return name in pending

        try:
            await wait_for(lambda: not [p for p in PANES if pane_shown(p)])
        except AssertionError:
            raise AssertionError(f"panes never showed a first page: {sorted(pending)}") from None
        # The Token pane shows what log-in read at once; the object count and mechanisms follow.
        info = screen.query_one("#token-info", Static)
        await wait_for(lambda: "counting" not in text_of(info))
        figures["token_objects_counted_s"] = time.perf_counter() - began
        audit = screen.query_one("#audit", PagedTable)
        await wait_for(lambda: app.findings is not None)
        figures["reconciled_s"] = time.perf_counter() - began
        # The key as a terminal sends it, without Pilot.press: Pilot waits for the process to
        # go idle, which it is not while the background integrity check runs (up to 1 s).
        shown = time.perf_counter()
        app.simulate_key("3")
        await wait_for(lambda: audit.row_count == PAGE and audit.region.height > 0)
        figures["audit_pane_switch_s"] = time.perf_counter() - shown
        await pilot.pause()
        await pilot.press("1")
        await pilot.pause()

        def labels() -> list[str]:
            return [keys.get_row_at(i)[0].plain for i in range(keys.row_count)]

        def shows(want: list[str]) -> bool:  # cheap enough to poll every millisecond
            if keys.row_count != len(want):
                return False
            return not want or keys.get_row_at(-1 + len(want))[0].plain == want[-1]

        latencies: list[float] = []
        box = app.screen.query_one("#keys-filter", Input)
        for text in TYPED:
            box.value = ""
            await wait_for(lambda: keys.row_count == PAGE)
            box.focus()
            await pilot.pause()
            await pilot.pause(0.2)
            before = labels()
            for n in range(1, len(text) + 1):
                query = KeyFilter.parse(text[:n]).query()
                want = [k.label for k in store.keys.page(limit=PAGE, **query)]
                pressed = time.perf_counter()
                # What a key press does to the Input, without Pilot.press, which waits for the
                # whole screen to settle (~60 ms on a bare app with one Input on this machine).
                box.insert_text_at_cursor(text[n - 1])
                await wait_for(lambda: shows(want))
                assert labels() == want
                if want != before:  # a keystroke that changed nothing proves nothing
                    latencies.append(time.perf_counter() - pressed)
                before = want
        figures["keystroke_ms_median"] = statistics.median(latencies) * 1000
        figures["keystroke_ms_max"] = max(latencies) * 1000
        figures["keystroke_ms"] = [round(x * 1000, 1) for x in latencies]
        figures["keystrokes"] = len(latencies)
        figures["keys_rows_held"] = keys.row_count
        figures["audit_rows_held"] = audit.row_count
        # The full integrity check Store.open left for the background (see MainScreen).
        await wait_for(lambda: "full_check_done_s" in figures, timeout=300)
    ws.close()
    status = Path("/proc/self/status").read_text()
    figures["peak_mb"] = int(status.split("VmHWM:")[1].split()[0]) / 1024
    return figures


def _measure_once(db: Path, home: Path, token: dict[str, str], softhsm: SoftHsm) -> dict[str, Any]:
    """One run of `measure` in a fresh interpreter, with each time as a ratio to the bare app's."""
    child = subprocess.run(
        [sys.executable, "-m", "tests.bench.test_ui_bench", str(db), str(home)],
        input=json.dumps(token),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).parents[2],
        env={**os.environ, "SOFTHSM2_CONF": str(softhsm.conf)},
        check=False,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    figures: dict[str, Any] = json.loads(child.stdout.strip().splitlines()[-1])
    bare = figures["bare_start_s"]
    login = figures["token_login_s"]
    for name in (
        "first_frame",
        *(f"{pane}_first_page" for pane in PANES),
        "token_objects_counted",
    ):
        figures[f"{name}_ratio"] = figures[f"{name}_s"] / bare
        # The token log-in (PKCS#11, audit head on the token) is work the bare app has no part of.
        figures[f"{name}_without_login_ratio"] = (figures[f"{name}_s"] - login) / bare
    return figures


def test_ui_at_scale_against_a_bare_textual_app(softhsm_token: SoftHsm, tmp_path: Path) -> None:
    source, built = scale_data.cached(KEYS, EVENTS)
    if built:
        bench({"bench": "ui.build", "keys": KEYS, "events": EVENTS, "seconds": round(built, 1)})
    db = scale_data.fresh_copy(source, tmp_path / "kmtui.db")
    checks = {}
    for pragma in ("quick_check", "integrity_check"):  # what Store.open chooses between
        conn = sqlite3.connect(db)
        began = time.perf_counter()
        assert conn.execute(f"PRAGMA {pragma}").fetchall() == [("ok",)]
        checks[f"{pragma}_s"] = round(time.perf_counter() - began, 2)
        conn.close()
    token = {
        "module": softhsm_token.module,
        "conf": str(softhsm_token.conf),
        "label": softhsm_token.label,
        "halves": softhsm_token.pairs,
    }
    runs = [_measure_once(db, tmp_path / "home", token, softhsm_token) for _ in range(MEASURES)]
    # The median of each figure over the runs: one run's pane times swing with the machine's load.
    figures = {
        name: statistics.median(r[name] for r in runs) if isinstance(value, float) else value
        for name, value in runs[-1].items()
    }
    row = {
        "bench": "ui.scale",
        "keys": KEYS,
        "events": EVENTS,
        **checks,
        **{k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()},
        "goals": {
            "ratio": GOAL_RATIO,
            "keystroke_ms": GOAL_KEYSTROKE_MS,
            "peak_mb": GOAL_PEAK_MB,
        },
        "bounds": BOUNDS,
    }
    bench(row)
    assert figures["keys_rows_held"] <= 3 * 100 and figures["audit_rows_held"] <= 3 * 100
    over = [f"{name} {row[name]:.2f} > {cap}" for name, cap in BOUNDS.items() if row[name] > cap]
    assert not over, "; ".join(over)


if __name__ == "__main__":
    token_in = json.loads(sys.stdin.read())
    print(json.dumps(asyncio.run(measure(Path(sys.argv[1]), Path(sys.argv[2]), token_in))))
