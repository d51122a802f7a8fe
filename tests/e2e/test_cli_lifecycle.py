"""A key's whole life through real `python -m kmtui` processes on a demo workstation.

Every dual-controlled command gets its approvals as `OPERATOR CODE` lines from the demo operators
(tests/e2e/helpers.py: codes from `kmtui demo codes --json`, or computed from the demo's seeds for
the neighbouring TOTP steps). Each test works on its own demo key, so any one of them can run
alone. No command may ever print a traceback or report an internal error.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import (
    AT_CONSOLE,
    Approvers,
    cka_id_of,
    kmtui,
    make_demo,
    plant_data_objects,
    token_objects,
)

# ~60 s: two demo workstations (~4 s each), ~70 commands, and approvals from 12 operator steps
# while each of the three operators has at most three usable steps at a time, so it usually waits
# once for a new 30-second step.
pytestmark = pytest.mark.slow

ACTIVE_LEGAL = ("key.deactivate", "key.revoke", "key.rotate", "key.schedule-destroy", "key.suspend")
CONTRACT = {"id", "label", "state", "algorithm", "policy", "kcv", "versions"}
VERSION_CONTRACT = {"version", "state", "pkcs11_uri"}


def run(
    home: Path, *args: str, code: int = 0, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """One command at the console; its exit code, and never a traceback or an internal error."""
    proc = kmtui(home, *args, stdin=stdin, env=AT_CONSOLE)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "internal error" not in proc.stderr, proc.stderr
    assert proc.returncode == code, f"exit {proc.returncode}: {proc.stderr}"
    return proc


def show(home: Path, key: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(run(home, "keys", "show", key, "--json").stdout)
    return data


def labels(home: Path) -> list[str]:
    return [k["label"] for k in json.loads(run(home, "keys", "list", "--json").stdout)]


def version(data: dict[str, Any], number: int) -> dict[str, Any]:
    return next(v for v in data["versions"] if v["version"] == number)


def when(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def events(home: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in run(home, "audit", "export").stdout.splitlines()]


@pytest.fixture(scope="module")
def approvers(demo_home: Path) -> Iterator[Approvers]:
    crew = Approvers(demo_home)
    yield crew
    print(f"\nwaited {crew.waited:.1f} s for new TOTP steps")  # shown with -s


@dataclass(frozen=True)
class FirstKey:
    """`keys create ... --json` approved by alice and bob, then the same file offered again."""

    key: dict[str, Any]
    replay: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def first_key(
    demo_home: Path, approvers: Approvers, tmp_path_factory: pytest.TempPathFactory
) -> FirstKey:
    approvals = approvers.file(tmp_path_factory.mktemp("approvals"), "alice", "bob")
    create = ("keys", "create", "--algorithm", "AES-256", "--purpose", "encrypt")
    proc = run(demo_home, *create, "--label", "orders-dek", "--json", "--approvals-from", approvals)
    # At once, while every code in the file is still inside its window: only reuse can fail it.
    replay = kmtui(demo_home, *create, "--label", "replayed", "--approvals-from", approvals)
    return FirstKey(json.loads(proc.stdout), replay)


# -- the lifecycle ------------------------------------------------------------------------------


def test_create_prints_the_contract_fields_and_the_kcv_the_token_computes(
    demo_home: Path, first_key: FirstKey
) -> None:
    key = first_key.key
    assert key.keys() >= CONTRACT
    assert key["label"] == "orders-dek"
    assert (key["state"], key["algorithm"], key["policy"]) == ("active", "AES-256", "default")
    assert len(key["kcv"]) == 6 and int(key["kcv"], 16) >= 0
    [only] = key["versions"]
    assert only.keys() >= VERSION_CONTRACT
    assert (only["version"], only["state"], only["kcv"]) == (1, "active", key["kcv"])
    assert only["pkcs11_uri"].startswith("pkcs11:token=kmtui-demo;")
    assert "id=kmtui%3A" + key["id"] + "%3A1" in only["pkcs11_uri"]
    # The KCV is the token's: AES-ECB of a zero block under the new key, computed here directly.
    [obj] = token_objects(demo_home, [cka_id_of(key["id"], 1)])[cka_id_of(key["id"], 1)]
    assert obj["ecb_kcv"] == key["kcv"]
    assert (obj["sensitive"], obj["extractable"]) == (True, False)
    # `keys show` prints the same record, and the trail names both approvers.
    shown = show(demo_home, key["id"])
    assert {k: shown[k] for k in CONTRACT} == {k: key[k] for k in CONTRACT}
    intent = next(
        e
        for e in events(demo_home)
        if e["action"] == "key.create" and e["key_id"] == key["id"] and e["outcome"] == "intent"
    )
    assert intent["params"]["approvers"] == ["alice", "bob"]


def test_rotate_makes_version_2_current_and_deactivates_version_1(
    demo_home: Path, approvers: Approvers, tmp_path: Path
) -> None:
    before = show(demo_home, "payments-db-dek")
    assert before["current_version"] == 1
    approvals = approvers.file(tmp_path, "bob", "carol")
    after = json.loads(
        run(
            demo_home, "keys", "rotate", "payments-db-dek", "--json", "--approvals-from", approvals
        ).stdout
    )
    assert (after["state"], after["current_version"]) == ("active", 2)
    old, new = version(after, 1), version(after, 2)
    assert (old["state"], old["kcv"]) == ("deactivated", before["kcv"])
    assert new["state"] == "active"
    assert after["kcv"] == new["kcv"] != old["kcv"]
    assert after["result"]["previous_state"] == "deactivated"
    assert show(demo_home, "payments-db-dek")["versions"] == after["versions"]
    # Both versions are on the token, each with the KCV the registry lists.
    ids = [cka_id_of(after["id"], 1), cka_id_of(after["id"], 2)]
    objects = token_objects(demo_home, ids)
    assert [objects[i][0]["check_value"] for i in ids] == [old["kcv"], new["kcv"]]


def test_suspend_then_resume_returns_the_key_to_active(demo_home: Path) -> None:
    suspended = json.loads(run(demo_home, "keys", "suspend", "webhook-hmac", "--json").stdout)
    assert suspended["state"] == "suspended"
    assert show(demo_home, "webhook-hmac")["state"] == "suspended"
    resumed = json.loads(run(demo_home, "keys", "resume", "webhook-hmac", "--json").stdout)
    assert resumed["state"] == "active"
    assert show(demo_home, "webhook-hmac")["state"] == "active"


def test_keys_check_self_checks_the_key_every_check_passes_and_it_counts_as_use(
    demo_home: Path,
) -> None:
    for label in ("release-signing", "backup-kek-2026"):
        assert show(demo_home, label)["last_used"] == ""
        data = json.loads(run(demo_home, "keys", "check", label, "--json").stdout)
        checks = dict(data["result"]["checks"])
        # The check value the token gave back equals the registry's; every test vector passed.
        current = version(data, data["current_version"])
        observed = checks.pop("kcv", "") or checks.pop("fingerprint", "")
        assert observed == (current.get("kcv") or current["fingerprint"])
        assert checks.pop("registry-match") == "pass"
        assert checks and set(checks.values()) == {"pass"}, checks
        assert show(demo_home, label)["last_used"] != ""


def test_revoke_superseded_deactivates_the_key_and_does_not_mark_it_compromised(
    demo_home: Path, approvers: Approvers, tmp_path: Path
) -> None:
    approvals = approvers.file(tmp_path, "alice", "carol")
    data = json.loads(
        run(
            demo_home,
            "keys",
            "revoke",
            "legacy-archive",
            "--reason",
            "superseded",
            "--json",
            "--approvals-from",
            approvals,
        ).stdout
    )
    assert (data["state"], data["revocation_reason"]) == ("deactivated", "superseded")
    assert data["compromised_at"] == ""
    assert version(data, 1)["state"] == "deactivated"
    assert show(demo_home, "legacy-archive")["state"] == "deactivated"


def test_schedule_destroy_then_destroy_is_refused_before_the_wait_and_cancel_restores_the_key(
    demo_home: Path, approvers: Approvers, tmp_path: Path
) -> None:
    key = "tls-issuing-ca"
    scheduled = json.loads(
        run(
            demo_home,
            "keys",
            "schedule-destroy",
            key,
            "--json",
            "--approvals-from",
            approvers.file(tmp_path, "alice", "bob"),
        ).stdout
    )
    assert scheduled["state"] == "destroy-scheduled"
    wait = when(scheduled["destroy_after"]) - datetime.now(UTC)
    assert timedelta(days=7) - timedelta(minutes=5) < wait <= timedelta(days=7)  # the default
    due = json.loads(run(demo_home, "keys", "due", "--json").stdout)
    assert any(d["label"] == key and d["destroy_after"] == scheduled["destroy_after"] for d in due)

    refused = run(demo_home, "keys", "destroy", key, "--confirm-label", key, code=1)
    assert f"may be destroyed only after {scheduled['destroy_after']}" in refused.stderr
    assert show(demo_home, key)["state"] == "destroy-scheduled"
    cka_id = cka_id_of(scheduled["id"], 1)
    assert {o["class"] for o in token_objects(demo_home, [cka_id])[cka_id]} == {
        "PRIVATE_KEY",
        "PUBLIC_KEY",
    }

    cancelled = json.loads(
        run(
            demo_home,
            "keys",
            "cancel-destroy",
            key,
            "--json",
            "--approvals-from",
            approvers.file(tmp_path, "bob", "carol"),
        ).stdout
    )
    assert (cancelled["state"], cancelled["destroy_after"]) == ("active", "")
    assert show(demo_home, key)["state"] == "active"


def test_keys_due_lists_rotation_dates_the_policy_sets(demo_home: Path) -> None:
    key = show(demo_home, "backup-kek-2026")
    rotation_due = when(key["activated_at"]) + timedelta(days=365)  # the default policy
    assert key["rotation_due_at"] == rotation_due.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    within_400 = json.loads(run(demo_home, "keys", "due", "--within", "400", "--json").stdout)
    [entry] = [d for d in within_400 if d["id"] == key["id"]]
    assert entry["rotation_due"] == key["rotation_due_at"]
    assert entry["originator_end"] == key["rotation_due_at"]  # both 365 days by default
    assert "recipient_end" not in entry  # 730 days: beyond the horizon
    assert entry["overdue"] is False
    within_30 = json.loads(run(demo_home, "keys", "due", "--json").stdout)
    assert key["id"] not in {d["id"] for d in within_30}


def test_policies_list_and_show_print_the_shipped_policies_as_json(demo_home: Path) -> None:
    listing = json.loads(run(demo_home, "policies", "list", "--json").stdout)
    assert {p["name"] for p in listing} == {"default", "exportable-dek", "kek", "signing"}
    assert all({"name", "description", "rules"} <= p.keys() for p in listing)
    default = json.loads(run(demo_home, "policies", "show", "default", "--json").stdout)
    assert default["name"] == "default"
    rules = default["rules"]
    assert rules["quorum"]["key.create"] == rules["quorum"]["key.destroy"] == 2
    assert (rules["destroy_wait_days"], rules["rotation_days"], rules["exportable"]) == (
        7,
        365,
        False,
    )
    assert next(p for p in listing if p["name"] == "default")["rules"] == rules


def test_policies_change_applies_a_rules_file_only_with_two_approvals(
    demo_home: Path, approvers: Approvers, tmp_path: Path
) -> None:
    before = json.loads(run(demo_home, "policies", "show", "kek", "--json").stdout)
    assert before["rules"]["rotation_days"] == 730
    rules = tmp_path / "kek.json"
    rules.write_text(
        json.dumps(
            {
                "algorithms": {"wrap": ["AES-256"]},
                "rotation_days": 700,
                "originator_usage_days": 730,
                "recipient_usage_days": 1095,
            }
        ),
        encoding="utf-8",
    )
    change = ("policies", "change", "kek", "--rules-file", str(rules), "--approvals-from")
    one = tmp_path / "one.txt"
    one.write_text(f"alice {approvers.stale('alice')}\n", encoding="utf-8")
    refused = run(demo_home, *change, str(one), code=1)
    assert "needs 2 approvals from distinct operators; 1 given" in refused.stderr
    unchanged = json.loads(run(demo_home, "policies", "show", "kek", "--json").stdout)
    assert unchanged["rules"] == before["rules"]

    run(demo_home, *change, approvers.file(tmp_path, "alice", "carol"))
    after = json.loads(run(demo_home, "policies", "show", "kek", "--json").stdout)
    assert after["rules"]["rotation_days"] == 700
    assert {k: v for k, v in after["rules"].items() if k != "rotation_days"} == {
        k: v for k, v in before["rules"].items() if k != "rotation_days"
    }
    changes = [e for e in events(demo_home) if e["action"] == "policy.change"]
    assert [e["outcome"] for e in changes][-2:] == ["intent", "success"]
    assert changes[-2]["params"]["approvers"] == ["alice", "carol"]


def test_reconcile_finds_the_token_and_registry_in_agreement_and_exits_0(demo_home: Path) -> None:
    report = json.loads(run(demo_home, "reconcile", "--json").stdout)
    assert report["clean"] is True
    assert report["findings"] == []
    versions = sum(
        len(k["versions"]) for k in json.loads(run(demo_home, "keys", "list", "--json").stdout)
    )
    assert report["matched"] == versions
    assert json.loads(run(demo_home, "audit", "verify", "--json").stdout)["ok"] is True


# -- bad input ----------------------------------------------------------------------------------


def test_an_unknown_key_exits_2(demo_home: Path) -> None:
    for args in (("show", "no-such-key"), ("suspend", "no-such-key"), ("rotate", "no-such-key")):
        proc = run(demo_home, "keys", *args, code=2)
        assert "No key 'no-such-key'" in proc.stderr


def test_an_illegal_transition_exits_1_and_names_the_legal_operations(demo_home: Path) -> None:
    assert show(demo_home, "backup-kek-2026")["state"] == "active"
    proc = run(demo_home, "keys", "resume", "backup-kek-2026", code=1)
    assert "A key in state active cannot be resumed." in proc.stderr
    assert f"the possible operations are: {', '.join(ACTIVE_LEGAL)}." in proc.stderr
    assert show(demo_home, "backup-kek-2026")["state"] == "active"


def test_approvals_from_only_one_operator_are_refused_with_exit_1(
    demo_home: Path, approvers: Approvers, tmp_path: Path
) -> None:
    create = ("keys", "create", "--label", "one-person", "--algorithm", "AES-128")
    alone = tmp_path / "alone.txt"
    alone.write_text(f"alice {approvers.stale('alice')}\n", encoding="utf-8")
    proc = run(demo_home, *create, "--approvals-from", str(alone), code=1)
    assert "needs 2 approvals from distinct operators; 1 given" in proc.stderr
    # One person under the same name twice is still one person.
    twice = tmp_path / "twice.txt"
    twice.write_text(f"alice {approvers.stale('alice')}\nalice 000000\n", encoding="utf-8")
    proc = run(demo_home, *create, "--approvals-from", str(twice), code=1)
    assert "alice (counted twice)" in proc.stderr
    assert "one-person" not in labels(demo_home)


def test_a_replayed_approvals_file_is_refused_with_exit_1(
    demo_home: Path, first_key: FirstKey
) -> None:
    proc = first_key.replay  # the file `keys create --label orders-dek` was approved with
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 1, proc.stderr
    assert "alice (code already used), bob (code already used)" in proc.stderr
    assert "replayed" not in labels(demo_home)


def test_a_malformed_approvals_file_exits_2(demo_home: Path, tmp_path: Path) -> None:
    create = ("keys", "create", "--label", "malformed", "--algorithm", "AES-128")
    for text in ("alice\nbob 123456\n", "alice 123456 bob 654321\n", "alice:123456\n"):
        bad = tmp_path / "bad.txt"
        bad.write_text(text, encoding="utf-8")
        proc = run(demo_home, *create, "--approvals-from", str(bad), code=2)
        assert "is not `OPERATOR CODE`" in proc.stderr
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"alice \xff\xfe\n")
    proc = run(demo_home, *create, "--approvals-from", str(binary), code=2)
    assert "Cannot read approvals" in proc.stderr
    proc = run(demo_home, *create, "--approvals-from", str(tmp_path / "missing.txt"), code=2)
    assert "Cannot read approvals" in proc.stderr
    assert "malformed" not in labels(demo_home)


def test_a_label_with_an_escape_character_exits_2(demo_home: Path) -> None:
    label = "evil\x1b]0;owned\x07"
    proc = run(demo_home, "keys", "create", "--label", label, "--algorithm", "AES-128", code=2)
    assert "may not contain control or bidi-override characters" in proc.stderr
    assert "\x1b" not in proc.stderr and "\x1b" not in proc.stdout
    assert not [x for x in labels(demo_home) if x.startswith("evil")]


# -- faults: no traceback, usage errors, crash logs, foreign objects ---------------------------


def test_keys_due_with_an_out_of_range_within_is_a_usage_error_exit_2(
    demo_home: Path, tmp_path: Path
) -> None:
    # HOME elsewhere: were it an internal error, its crash log must not reach the real user's dirs.
    proc = kmtui(demo_home, "keys", "due", "--within", "999999999", env=_elsewhere(tmp_path))
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 2, proc.stderr
    assert not list(tmp_path.rglob("crash.log"))


def test_an_internal_error_leaves_its_crash_log_under_the_home_given_with_dash_dash_home(
    demo_home: Path, tmp_path: Path
) -> None:
    # A copy of the workstation whose registry holds a key state kmtui does not know.
    home = tmp_path / "copy"
    shutil.copytree(demo_home / "config", home / "config")
    (home / "data").mkdir(parents=True)
    src = sqlite3.connect(demo_home / "data" / "kmtui.db")
    dst = sqlite3.connect(home / "data" / "kmtui.db")
    src.backup(dst)
    src.close()
    dst.execute("UPDATE keys SET state = 'no-such-state' WHERE label = 'backup-kek-2026'")
    dst.commit()
    dst.close()
    user = _elsewhere(tmp_path)
    proc = kmtui(home, "keys", "list", env=user)
    assert proc.returncode == 1
    assert "internal error" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(Path(str(user["HOME"])).rglob("crash.log"))
    assert (home / "log" / "crash.log").is_file()
    assert str(home / "log" / "crash.log") in proc.stderr


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess[str]:
    """`reconcile --json` on a workstation of its own after a foreign tool added DATA objects."""
    home = make_demo(tmp_path_factory.mktemp("foreign"))
    plant_data_objects(home, ["planted-one", "planted-two", "twin", "twin"])
    return kmtui(home, "reconcile", "--json", env=AT_CONSOLE)


def _foreign_findings(proc: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 1, proc.stderr  # findings: not clean
    return [f for f in json.loads(proc.stdout)["findings"] if f["kind"] == "foreign-object"]


def test_reconcile_reports_each_foreign_object_without_a_cka_id_on_its_own(
    foreign: subprocess.CompletedProcess[str],
) -> None:
    labels = sorted(f["label"] for f in _foreign_findings(foreign))
    assert labels == ["planted-one", "planted-two", "twin", "twin"]  # and not the audit head


def test_reconcile_gives_each_foreign_object_its_own_finding_id_even_under_one_label(
    foreign: subprocess.CompletedProcess[str],
) -> None:
    twins = [f["id"] for f in _foreign_findings(foreign) if f["label"] == "twin"]
    assert len(twins) == 2
    assert twins[0] != twins[1]


def _elsewhere(tmp_path: Path) -> dict[str, str | None]:
    """A user whose home dirs are under tmp_path (platformdirs follows HOME and XDG_*)."""
    user = tmp_path / "user"
    user.mkdir(exist_ok=True)
    return {
        **AT_CONSOLE,
        "HOME": str(user),
        "XDG_STATE_HOME": None,
        "XDG_DATA_HOME": None,
        "XDG_CONFIG_HOME": None,
        "XDG_CACHE_HOME": None,
    }
