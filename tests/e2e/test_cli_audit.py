"""The auditor's commands: offline verification of a copy, the public key, SIEM export formats."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

from tests.e2e.helpers import kmtui
from tests.forgery import rechain

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
    report = json.loads(proc.stdout)
    assert report["token_head"] == "matched"
    # The token at hand vouches for its own audit key, and the database's record of it agrees.
    assert (report["key_source"], report["key_record"]) == ("token", "matches")
    assert report["scope"] == "chain + signed checkpoints + token head"
    assert report["session_ends"] >= 1 and report["unsigned_session_ends"] == []


def test_live_verification_refuses_a_given_key_that_is_not_the_tokens(
    demo_home: Path, tmp_path: Path
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    (tmp_path / "other.pem").write_bytes(
        other.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    proc = kmtui(demo_home, "audit", "verify", "--pubkey", str(tmp_path / "other.pem"))
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "is not this token's audit key" in proc.stderr


def test_without_a_key_or_the_token_verify_checks_the_chain_only_and_says_so(
    demo_home: Path, tmp_path: Path
) -> None:
    copy = _copy(demo_home, tmp_path / "copy.db")
    text = kmtui(tmp_path, "audit", "verify", "--db", str(copy))
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith("audit trail OK (chain only):")
    assert "a key stored in the database proves nothing" in text.stdout
    assert "agree" not in text.stdout and "NOT CHECKED: signed checkpoints" in text.stderr
    report = json.loads(kmtui(tmp_path, "audit", "verify", "--db", str(copy), "--json").stdout)
    assert (report["ok"], report["scope"], report["key_source"]) == (True, "chain only", "")
    assert report["checkpoints"] >= 1 and report["key_fingerprint"] == ""


def test_a_copy_missing_one_session_checkpoint_fails_naming_that_session_end(
    demo_home: Path, tmp_path: Path
) -> None:
    pem = json.loads(kmtui(demo_home, "audit", "pubkey", "--json").stdout)["pem"]
    (tmp_path / "audit.pem").write_text(pem)
    copy = _copy(demo_home, tmp_path / "copy.db")
    conn = sqlite3.connect(copy, isolation_level=None)
    ends = [
        r[0] for r in conn.execute("SELECT seq FROM audit_events WHERE action = 'token.logout'")
    ]
    assert len(ends) >= 2
    conn.execute("DELETE FROM audit_checkpoints WHERE seq = ?", (ends[0],))
    conn.close()
    args = ("audit", "verify", "--db", str(copy), "--pubkey", str(tmp_path / "audit.pem"))
    proc = kmtui(tmp_path, *args)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert f"AUDIT TRAIL BROKEN at event {ends[0]}" in proc.stderr
    assert f"the session that ended at event {ends[0]} has no signed checkpoint" in proc.stderr
    report = json.loads(kmtui(tmp_path, *args, "--json").stdout)
    assert report["unsigned_session_ends"] == [ends[0]] and report["ok"] is False


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


def test_an_edited_rechained_trail_without_its_checkpoints_fails_offline_verification(
    demo_home: Path, tmp_path: Path
) -> None:
    pem = json.loads(kmtui(demo_home, "audit", "pubkey", "--json").stdout)["pem"]
    (tmp_path / "audit.pem").write_text(pem)
    copy = _copy(demo_home, tmp_path / "copy.db")
    conn = sqlite3.connect(copy, isolation_level=None)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f'DROP TRIGGER "{name}"')
    edited = conn.execute(
        "SELECT min(seq) FROM audit_events WHERE action = 'key.create' AND outcome = 'intent'"
    ).fetchone()[0]
    conn.execute("UPDATE audit_events SET actor = 'mallory' WHERE seq = ?", (edited,))
    rechain(conn, edited)
    conn.execute("DELETE FROM audit_checkpoints")
    conn.close()
    proc = kmtui(
        tmp_path, "audit", "verify", "--db", str(copy), "--pubkey", str(tmp_path / "audit.pem")
    )
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "no signed checkpoint" in proc.stderr and "Traceback" not in proc.stderr
