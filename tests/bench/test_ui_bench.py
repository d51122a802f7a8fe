"""The TUI at scale: 100,000 keys and 1,000,000 audit events against a bare Textual app.

Run with `make bench`. The measuring runs in a fresh interpreter (this module run with -m), so
its peak memory (VmHWM) is the app's alone, and the bare app (an empty DataTable, started with
run_test the same way) is timed in that same process and run. The database is built once per
size and generator and cached under the temp dir (see tests/ui/scale_data.py);
KMTUI_BENCH_KEYS and KMTUI_BENCH_EVENTS shrink it for a quick try.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual.app import App, ComposeResult
from textual.widgets import DataTable, Input

from tests.conftest import SoftHsm
from tests.ui import scale_data

pytestmark = pytest.mark.bench
KEYS = int(os.environ.get("KMTUI_BENCH_KEYS", "100000"))
EVENTS = int(os.environ.get("KMTUI_BENCH_EVENTS", "1000000"))
SIZE = (100, 30)
BARE_ROUNDS = 3
TYPED = ("orders-0001", "tag:rare", "alg:EC")
GOAL_RATIO, GOAL_KEYSTROKE_MS, GOAL_PEAK_MB = 1.3, 50.0, 200.0


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
    from kmtui.core.hsm import Hsm
    from kmtui.core.service import Workstation
    from kmtui.core.store import Store
    from kmtui.paths import under
    from kmtui.ui.app import KmtuiApp
    from kmtui.ui.filters import KeyFilter
    from kmtui.ui.screens.main import MainScreen
    from kmtui.ui.widgets.keys_pane import PAGE
    from kmtui.ui.widgets.paged_table import PagedTable

    bare = [await bare_start() for _ in range(BARE_ROUNDS)]
    began = time.perf_counter()
    store = Store.open(db)
    store_open = time.perf_counter() - began
    hsm = Hsm(token["module"], token_label=token["label"], softhsm2_conf=token["conf"])
    ws = Workstation.assemble(hsm, store)
    figures: dict[str, Any] = {"bare_start_s": statistics.median(bare), "store_open_s": store_open}
    login = ws.login

    def timed_login(pin: str, actor: str = "console") -> Any:
        started = time.perf_counter()
        try:
            return login(pin, actor)
        finally:
            figures["token_login_s"] = time.perf_counter() - started

    ws.login = timed_login  # type: ignore[method-assign]
    began = time.perf_counter()
    app = KmtuiApp(ws, Config(), paths=under(home), pin=token["pin"])
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(lambda: isinstance(app.screen, MainScreen) and app.screen.query("#keys"))
        figures["first_frame_s"] = time.perf_counter() - began
        keys = app.screen.query_one("#keys", PagedTable)
        audit = app.screen.query_one("#audit", PagedTable)
        await wait_for(lambda: keys.row_count == PAGE)
        figures["keys_first_page_s"] = time.perf_counter() - began
        await wait_for(lambda: audit.row_count == PAGE)
        figures["audit_first_page_s"] = time.perf_counter() - began
        await wait_for(lambda: app.findings is not None)
        figures["reconciled_s"] = time.perf_counter() - began
        await pilot.press("3")
        shown = time.perf_counter()
        await wait_for(lambda: audit.row_count == PAGE and audit.region.height > 0)
        await pilot.pause()
        figures["audit_pane_switch_s"] = time.perf_counter() - shown
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
                want = [k.label for k in store.page_keys(limit=PAGE, **query)]
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
        figures["keystrokes"] = len(latencies)
        figures["keys_rows_held"] = keys.row_count
        figures["audit_rows_held"] = audit.row_count
    ws.close()
    status = Path("/proc/self/status").read_text()
    figures["peak_mb"] = int(status.split("VmHWM:")[1].split()[0]) / 1024
    return figures


def test_ui_at_scale_against_a_bare_textual_app(softhsm_token: SoftHsm, tmp_path: Path) -> None:
    source, built = scale_data.cached(KEYS, EVENTS)
    if built:
        bench({"bench": "ui.build", "keys": KEYS, "events": EVENTS, "seconds": round(built, 1)})
    db = scale_data.fresh_copy(source, tmp_path / "kmtui.db")
    token = {
        "module": softhsm_token.module,
        "conf": str(softhsm_token.conf),
        "label": softhsm_token.label,
        "pin": softhsm_token.pin,
    }
    child = subprocess.run(
        [sys.executable, "-m", "tests.bench.test_ui_bench", str(db), str(tmp_path / "home")],
        input=json.dumps(token),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).parents[2],
        env={**os.environ, "SOFTHSM2_CONF": str(softhsm_token.conf)},
        check=False,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    figures = json.loads(child.stdout.strip().splitlines()[-1])
    bare = figures["bare_start_s"]
    row = {
        "bench": "ui.scale",
        "keys": KEYS,
        "events": EVENTS,
        **{k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()},
        "first_frame_ratio": round(figures["first_frame_s"] / bare, 2),
        # The token log-in (PKCS#11, audit head on the token) is work the bare app has no part of.
        "first_frame_without_login_ratio": round(
            (figures["first_frame_s"] - figures["token_login_s"]) / bare, 2
        ),
        "keys_first_page_without_login_ratio": round(
            (figures["keys_first_page_s"] - figures["token_login_s"]) / bare, 2
        ),
        "keys_first_page_ratio": round(figures["keys_first_page_s"] / bare, 2),
        "audit_first_page_ratio": round(figures["audit_first_page_s"] / bare, 2),
        "goals": {
            "ratio": GOAL_RATIO,
            "keystroke_ms": GOAL_KEYSTROKE_MS,
            "peak_mb": GOAL_PEAK_MB,
        },
    }
    bench(row)
    assert figures["keys_rows_held"] <= 3 * 100 and figures["audit_rows_held"] <= 3 * 100


if __name__ == "__main__":
    token_in = json.loads(sys.stdin.read())
    print(json.dumps(asyncio.run(measure(Path(sys.argv[1]), Path(sys.argv[2]), token_in))))
