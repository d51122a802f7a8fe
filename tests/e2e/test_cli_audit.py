"""The auditor's commands: offline verification of a copy, the public key, SIEM export formats."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

from tests.e2e.helpers import kmtui

SYSLOG = re.compile(
    r"^<(?P<pri>\d{1,3})>1 (?P<ts>\S+) (?P<host>\S+) kmtui - (?P<msgid>\S+) "
    r"\[kmtui@32473 (?P<sd>(?:\w+=\"(?:[^\"\\\]]|\\.)*\" ?)+)\] (?P<msg>\{.*\})$"
)


def _copy(demo_home: Path, dest: Path) -> Path:
    src = sqlite3.connect(demo_home / "data" / "kmtui.db")
    out = sqlite3.connect(dest)
    src.backup(out)
    src.close()
    out.close()
    return dest


def test_offline_verification_of_a_copy_with_the_printed_public_key(
    demo_home: Path, tmp_path: Path
) -> None:
    key = json.loads(kmtui(demo_home, "audit", "pubkey", "--json").stdout)
    assert key["fingerprint"].startswith("SHA256:") and "BEGIN PUBLIC KEY" in key["pem"]
    (tmp_path / "audit.pem").write_text(key["pem"])
    kmtui(demo_home, "audit", "checkpoint")
    copy = _copy(demo_home, tmp_path / "copy.db")
    ok = kmtui(
        tmp_path,
        "audit",
        "verify",
        "--db",
        str(copy),
        "--pubkey",
        str(tmp_path / "audit.pem"),
        "--json",
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    report = json.loads(ok.stdout)
    assert report["ok"] and report["key_source"] == "given" and report["checkpoints"] >= 1
    assert report["key_fingerprint"] == key["fingerprint"]

    last = report["last_checkpoint"]
    conn = sqlite3.connect(copy)
    conn.execute("DROP TRIGGER audit_events_no_delete")
    conn.execute("DELETE FROM audit_events WHERE seq >= ?", (last,))
    conn.commit()
    conn.close()
    cut = kmtui(
        tmp_path, "audit", "verify", "--db", str(copy), "--pubkey", str(tmp_path / "audit.pem")
    )
    assert cut.returncode == 3
    assert "cut off" in cut.stderr and "Traceback" not in cut.stderr


def test_live_verification_checks_the_head_on_the_token(demo_home: Path) -> None:
    proc = kmtui(demo_home, "audit", "verify", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["token_head"] == "matched"


def test_export_formats_carry_seq_and_hashes(demo_home: Path) -> None:
    lines = kmtui(demo_home, "audit", "export").stdout.splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    for fmt, check in (("cef", _cef_ok), ("syslog", _syslog_ok)):
        out = kmtui(demo_home, "audit", "export", "--format", fmt).stdout.splitlines()
        assert len(out) >= len(events)
        for line, event in zip(out, events, strict=False):
            check(line, event)


def _cef_ok(line: str, event: dict) -> None:
    header = re.split(r"(?<!\\)\|", line, maxsplit=7)
    assert header[0] == "CEF:0" and header[1] == "kmtui" and header[4] == event["action"]
    assert f"cn1={event['seq']}" in line and f"cs2={event['hash']}" in line
    assert f"cs3={event['prev_hash']}" in line


def _syslog_ok(line: str, event: dict) -> None:
    match = SYSLOG.match(line)
    assert match, line
    assert match["ts"] == event["ts"] and match["msgid"] == event["action"]
    assert f'seq="{event["seq"]}"' in match["sd"] and f'hash="{event["hash"]}"' in match["sd"]
    assert json.loads(match["msg"]) == event["params"]
    assert int(match["pri"]) // 8 == 10  # authpriv


def test_export_since_a_time_or_a_sequence(demo_home: Path) -> None:
    events = [json.loads(x) for x in kmtui(demo_home, "audit", "export").stdout.splitlines()]
    middle = events[len(events) // 2]
    by_seq = kmtui(demo_home, "audit", "export", "--since", str(middle["seq"] - 1)).stdout
    by_time = kmtui(demo_home, "audit", "export", "--since", middle["ts"]).stdout
    assert json.loads(by_seq.splitlines()[0])["seq"] == middle["seq"]
    assert json.loads(by_time.splitlines()[0])["ts"] >= middle["ts"]
    bad = kmtui(demo_home, "audit", "export", "--since", "yesterday")
    assert bad.returncode == 2 and "neither a sequence number nor a time" in bad.stderr


def test_transcript_is_written_as_text_or_html_with_a_signed_checkpoint(
    demo_home: Path, tmp_path: Path
) -> None:
    text = kmtui(demo_home, "audit", "transcript", "--since", "0")
    assert text.returncode == 0, text.stderr
    assert "kmtui ceremony transcript" in text.stdout and "signature" in text.stdout
    assert "present        alice, bob, carol" in text.stdout  # the demo set-up's approvers
    out = tmp_path / "t.html"
    page = kmtui(
        demo_home, "audit", "transcript", "--since", "0", "--format", "html", "--out", str(out)
    )
    assert page.returncode == 0 and out.read_text().startswith("<!doctype html>")
