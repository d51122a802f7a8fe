"""The command line as a script or an SSH admin uses it: real processes, a real demo workstation."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kmtui import __version__
from kmtui.demo import DEMO_KEYS
from tests.e2e.helpers import demo_pairs, demo_pin, kmtui, make_demo


def test_version() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kmtui", "--version"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"kmtui {__version__}"


def test_locate_puts_everything_under_home(tmp_path: Path) -> None:
    proc = kmtui(tmp_path, "locate", "--json")
    assert proc.returncode == 0
    data = json.loads(proc.stdout)
    for name in ("config_file", "database", "data_dir", "state_dir", "log_dir"):
        assert Path(data[name]).is_relative_to(tmp_path), name


def test_kmtui_home_environment_variable_is_honoured(tmp_path: Path) -> None:
    env = {**os.environ, "KMTUI_HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "kmtui", "locate", "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert json.loads(proc.stdout)["database"] == str(tmp_path / "data" / "kmtui.db")


def test_unconfigured_workstation_says_what_to_do(tmp_path: Path) -> None:
    proc = kmtui(tmp_path, "token", "info")
    assert proc.returncode == 1
    assert "No PKCS#11 module configured" in proc.stderr
    assert "kmtui demo" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    proc = kmtui(tmp_path, "keys", "frobnicate")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr


def test_keys_list_json_has_the_contract_fields(demo_home: Path) -> None:
    proc = kmtui(demo_home, "keys", "list", "--json")
    assert proc.returncode == 0, proc.stderr
    keys = json.loads(proc.stdout)
    assert sorted(k["label"] for k in keys) == sorted(label for label, _, _ in DEMO_KEYS)
    for key in keys:
        assert {"id", "label", "state", "algorithm", "policy", "kcv", "versions"} <= key.keys()
        assert key["state"] == "active"
        version = key["versions"][0]
        assert version["version"] == 1
        assert version["pkcs11_uri"].startswith("pkcs11:token=kmtui-demo;")
        if key["algorithm"].startswith(("AES", "HMAC")):
            assert len(key["kcv"]) == 6 and version["kcv"] == key["kcv"]
        else:
            assert version["fingerprint"].startswith("SHA256:")


def test_keys_show_accepts_id_label_and_pkcs11_uri(demo_home: Path) -> None:
    by_label = json.loads(kmtui(demo_home, "keys", "show", "payments-db-dek", "--json").stdout)
    by_id = json.loads(kmtui(demo_home, "keys", "show", by_label["id"], "--json").stdout)
    uri = by_label["versions"][0]["pkcs11_uri"]
    by_uri = json.loads(kmtui(demo_home, "keys", "show", uri, "--json").stdout)
    assert by_label == by_id == by_uri
    missing = kmtui(demo_home, "keys", "show", "no-such-key")
    assert missing.returncode == 2
    assert "No key 'no-such-key'" in missing.stderr


def test_token_info_reads_the_demo_token(demo_home: Path) -> None:
    proc = kmtui(demo_home, "token", "info", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["label"] == "kmtui-demo"
    assert "AES_KEY_GEN" in info["mechanisms"]
    # What the demo's log-in probed, read from the trail without a PIN.
    assert info["profile_source"].startswith("probed at the log-in of ")
    assert info["profile"]["sealing"] == "AES-GCM" and info["profile"]["rejected"] == []


def test_token_info_probe_logs_in_and_shows_each_capability_with_what_kmtui_does(
    demo_home: Path,
) -> None:
    proc = kmtui(demo_home, "token", "info", "--probe")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "profile       probed now" in lines
    rows = {line.split()[0]: line for line in lines if line.startswith("  ")}
    assert "used" in rows["seed"] and "AES-GCM" in rows["seed"]
    assert "the token refuses to wrap them" in rows["non-extractable"]


def test_audit_verify_passes_then_fails_with_exit_3_after_tampering(
    demo_home: Path, tmp_path: Path
) -> None:
    ok = kmtui(demo_home, "audit", "verify", "--json")
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    assert report["ok"] and report["events"] >= 2 * len(DEMO_KEYS)

    # Tamper with a copy, so the other tests keep their clean workstation.
    copy = tmp_path / "copy"
    src = sqlite3.connect(demo_home / "data" / "kmtui.db")
    (copy / "data").mkdir(parents=True)
    dst = sqlite3.connect(copy / "data" / "kmtui.db")
    src.backup(dst)
    src.close()
    # An attacker with the file drops kmtui's append-only triggers first.
    for (name,) in dst.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        dst.execute(f'DROP TRIGGER "{name}"')
    dst.execute("UPDATE audit_events SET outcome = 'failure' WHERE seq = 3")
    dst.commit()
    dst.close()
    bad = kmtui(copy, "audit", "verify")
    assert bad.returncode == 3
    assert "event 3" in bad.stderr


def test_audit_export_prints_one_json_event_per_line(demo_home: Path) -> None:
    proc = kmtui(demo_home, "audit", "export", "--since", "2")
    assert proc.returncode == 0
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert events[0]["seq"] == 3
    assert [e["seq"] for e in events] == list(range(3, 3 + len(events)))
    creates = [e for e in events if e["action"] == "key.create" and e["outcome"] == "success"]
    assert len(creates) == len(DEMO_KEYS)
    assert all(e["params"]["intent"] < e["seq"] for e in creates)


def test_a_corrupt_database_is_refused_without_a_traceback(demo_home: Path, tmp_path: Path) -> None:
    home = tmp_path / "broken"
    (home / "data").mkdir(parents=True)
    (home / "data" / "kmtui.db").write_bytes(os.urandom(8192))
    proc = kmtui(home, "keys", "list")
    assert proc.returncode == 1
    assert "corrupt" in proc.stderr.lower() or "not a database" in proc.stderr.lower()
    assert "Traceback" not in proc.stderr


def test_no_pin_on_the_command_line_and_none_in_the_database(demo_home: Path) -> None:
    pin = demo_pin(demo_home)
    for option in ("--pin", "--pin-file", "--pin-half"):
        proc = kmtui(demo_home, option, pin, "keys", "list")
        assert proc.returncode == 2, option  # there is no such option
    for path in (demo_home / "data").glob("kmtui.db*"):
        data = path.read_bytes()
        assert pin.encode() not in data
        assert all(half.encode() not in data for _, half in demo_pairs(demo_home))


def test_demo_flag_points_headless_commands_at_the_demo_workstation(demo_home: Path) -> None:
    base = demo_home.parent.parent  # <base>/data/demo
    proc = kmtui(base, "--demo", "keys", "list", "--json")
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)) == len(DEMO_KEYS)
    located = json.loads(kmtui(base, "locate", "--demo", "--json").stdout)
    assert located["database"] == str(demo_home / "data" / "kmtui.db")


def test_demo_flag_without_a_demo_says_how_to_make_one(tmp_path: Path) -> None:
    proc = kmtui(tmp_path, "--demo", "keys", "list")
    assert proc.returncode == 2
    assert "Run `kmtui demo` first" in proc.stderr


def test_two_demo_set_ups_at_once_make_one_working_demo(tmp_path: Path) -> None:
    """The second waits for the first instead of making a second token with the same label."""
    with ThreadPoolExecutor(2) as pool:
        homes = list(pool.map(lambda _: make_demo(tmp_path), range(2)))
    assert homes[0] == homes[1]
    listed = kmtui(tmp_path, "--demo", "keys", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == 6
    info = kmtui(tmp_path, "--demo", "token", "info", "--json")
    assert info.returncode == 0, info.stderr
