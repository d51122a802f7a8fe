"""`kmtui audit forward` as a real process, against the test collector on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.helpers import kmtui
from tests.unit.test_forward import (
    LOOPBACK,
    WAIT,
    Collector,
    free_port,
    make_certificate,
    server_context,
)


@pytest.fixture
def collectors() -> Iterator[list[Collector]]:
    started: list[Collector] = []
    yield started
    for collector in started:
        collector.stop()


def head_seq(demo_home: Path) -> int:
    conn = sqlite3.connect(f"file:{demo_home / 'data' / 'kmtui.db'}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT max(seq) FROM audit_events").fetchone()[0])
    finally:
        conn.close()


def test_forward_sends_the_trail_once_and_reports_the_cursor(
    demo_home: Path, collectors: list[Collector]
) -> None:
    collector = Collector()
    collectors.append(collector)
    to = f"{LOOPBACK}:{collector.port}"
    head = head_seq(demo_home)
    first = kmtui(demo_home, "audit", "forward", "--to", to)
    assert first.returncode == 0, first.stderr
    assert first.stdout == f"forwarded {head} events to {to}; cursor at event {head}\n"
    assert collector.seqs() == list(range(1, head + 1)) and not collector.problems
    again = kmtui(demo_home, "audit", "forward", "--to", to, "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == {"to": to, "forwarded": 0, "cursor": head}
    assert collector.connections == 1


def test_forward_over_tls_trusts_the_given_ca_and_refuses_another(
    demo_home: Path, collectors: list[Collector], tmp_path: Path
) -> None:
    served = make_certificate(tmp_path, "collector", ip=LOOPBACK, dns=None)
    stranger = make_certificate(tmp_path, "stranger", ip=LOOPBACK, dns=None)
    collector = Collector(tls=server_context(served))
    collectors.append(collector)
    to = f"{LOOPBACK}:{collector.port}"
    refused = kmtui(demo_home, "audit", "forward", "--to", to, "--ca", str(stranger.cert))
    assert refused.returncode == 1
    assert f"kmtui: TLS verification of the collector at {to} failed" in refused.stderr
    assert "--ca FILE" in refused.stderr and "Traceback" not in refused.stderr
    assert collector.messages == []
    ok = kmtui(demo_home, "audit", "forward", "--to", to, "--tls", "--ca", str(served.cert))
    assert ok.returncode == 0, ok.stderr
    head = head_seq(demo_home)
    assert collector.seqs() == list(range(1, head + 1))


def test_forward_errors_say_what_to_do_with_the_documented_exit_codes(demo_home: Path) -> None:
    port = free_port()
    down = kmtui(demo_home, "audit", "forward", "--to", f"{LOOPBACK}:{port}")
    assert down.returncode == 1 and down.stdout == ""
    assert f"The collector at {LOOPBACK}:{port} is unreachable" in down.stderr
    assert "the next attempt resends" in down.stderr and "Traceback" not in down.stderr
    for bad in ("nocolon", "host:0", "host:99999", "[::1:514"):
        usage = kmtui(demo_home, "audit", "forward", "--to", bad)
        assert usage.returncode == 2 and "is not HOST:PORT" in usage.stderr, bad


def test_forward_follow_waits_out_an_outage_then_stops_on_ctrl_c_with_130(
    demo_home: Path, collectors: list[Collector]
) -> None:
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if k not in ("KMTUI_HOME", "SOFTHSM2_CONF")}
    command = ["audit", "forward", "--to", f"{LOOPBACK}:{port}", "--follow", "--interval", "0.2"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "kmtui", "--home", str(demo_home), *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environ,
        # As at a terminal: a test run started in the background inherits SIGINT ignored, and
        # Python then installs no KeyboardInterrupt handler in the child.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines: list[str] = []
    errors: list[str] = []
    readers = [
        threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True),
        threading.Thread(target=lambda: errors.extend(proc.stderr or []), daemon=True),
    ]
    for reader in readers:
        reader.start()
    head = head_seq(demo_home)
    try:
        deadline = time.monotonic() + WAIT
        while not any("retrying in" in e for e in errors) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any("unreachable" in e for e in errors), errors
        collector = Collector(port)
        collectors.append(collector)
        deadline = time.monotonic() + WAIT
        while len(set(collector.seqs())) < head and time.monotonic() < deadline:
            time.sleep(0.05)
        assert set(collector.seqs()) == set(range(1, head + 1))
        proc.send_signal(signal.SIGINT)
        assert proc.wait(WAIT) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT)
        for reader in readers:
            reader.join(WAIT)
    assert lines[0].startswith(f"following the audit trail to {LOOPBACK}:{port} from event")
    assert any(f"cursor at event {head}" in line for line in lines), lines
    assert "Traceback" not in "".join(errors)
