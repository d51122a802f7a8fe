"""A policy change that raises one quorum lowers none, and the approvers are shown old → new."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.helpers import AT_CONSOLE, Approvers, kmtui


def test_raising_one_quorum_keeps_every_other_and_the_prompt_shows_old_to_new(
    demo_home: Path, tmp_path: Path
) -> None:
    approvers = Approvers(demo_home)
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"quorum": {"key.create": 3}}), encoding="utf-8")
    change = kmtui(
        demo_home,
        "policies",
        "change",
        "default",
        "--rules-file",
        str(rules),
        "--approvals-from",
        approvers.file(tmp_path, "alice", "bob"),
        env=AT_CONSOLE,
    )
    assert change.returncode == 0, change.stderr
    assert "Changes   : quorum key.create: 2 (default) → 3" in change.stderr
    shown = json.loads(kmtui(demo_home, "policies", "show", "default", "--json").stdout)
    assert shown["rules"]["quorum"]["key.create"] == 3
    assert shown["rules"]["quorum"]["key.revoke"] == 2

    nobody = tmp_path / "nobody.txt"
    nobody.write_text("", encoding="utf-8")
    for args in (
        ("keys", "revoke", "payments-db-dek", "--reason", "superseded"),
        ("keys", "schedule-destroy", "legacy-archive"),
        ("operators", "enroll", "mallory", "--role", "custodian"),
    ):
        proc = kmtui(demo_home, *args, "--approvals-from", str(nobody), env=AT_CONSOLE)
        assert proc.returncode == 1, (args, proc.stdout, proc.stderr)
        assert "needs 2 approvals from distinct operators; 0 given" in proc.stderr, args
    listed = json.loads(kmtui(demo_home, "keys", "list", "--json").stdout)
    assert {k["label"]: k["state"] for k in listed}["payments-db-dek"] == "active"
    operators = json.loads(kmtui(demo_home, "operators", "list", "--json").stdout)
    assert "mallory" not in {o["operator"] for o in operators}


def test_a_change_below_the_floor_is_refused_before_anyone_approves(
    demo_home: Path, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"quorum": {"key.destroy": 1}}), encoding="utf-8")
    proc = kmtui(
        demo_home, "policies", "change", "default", "--rules-file", str(rules), env=AT_CONSOLE
    )
    assert proc.returncode == 1, proc.stderr
    assert "quorum key.destroy cannot be below 2" in proc.stderr
    assert "Approver" not in proc.stderr and "Digest" not in proc.stderr
