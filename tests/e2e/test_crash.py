"""Crash safety of the gate: a process SIGKILLed at each step boundary of generate, rotate and
destroy, then a fresh process (the restart) reconciles the same database and token.

Boundaries (tests/e2e/crash_child.py wraps kmtui's own methods in the child to find them):
  intent-written     the intent row is appended but its transaction has not committed
  intent-committed   the intent is committed; the token call has not started
  hsm-partial        destroy only: the first of two versions is gone from the token
  hsm-done           the token call(s) returned; nothing of the outcome is written
  outcome-written    registry update and outcome row written in one transaction, not committed
  outcome-committed  that transaction committed; the process dies right after
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kmtui.core import errors
from kmtui.core.control.operations import OpKind
from kmtui.core.keys.findings import FindingKind
from kmtui.core.models import AuditEvent, KeyState
from kmtui.core.token import templates
from kmtui.core.token.session import Hsm
from tests.conftest import SoftHsm, Team, sealed_edit

CHILD = Path(__file__).with_name("crash_child.py")
KINDS = {"create": OpKind.KEY_CREATE, "rotate": OpKind.KEY_ROTATE, "destroy": OpKind.KEY_DESTROY}
# create: a secret key (KCV); rotate: a key pair (fingerprint, two objects per version);
# destroy: a secret key with two versions, so a kill can fall between the two destructions.
ALGORITHM = {"create": "AES-256", "rotate": "EC-P256", "destroy": "AES-128"}
PURPOSE = {"create": "encrypt", "rotate": "sign", "destroy": "encrypt"}
OPEN_TRANSACTION = {
    "intent-written": True,
    "intent-committed": False,
    "hsm-partial": False,
    "hsm-done": False,
    "outcome-written": True,
    "outcome-committed": False,
}

# What the first reconciliation after the restart must report about the key.
FINDINGS: dict[str, set[str]] = {
    "untouched": set(),  # nothing was committed: as if the operation never started
    "done": set(),
    "recovered": set(),  # finished by reconciliation, which says so in `completed`
    "interrupted": {FindingKind.INTERRUPTED.value},
    # v1 is gone but the registry still holds it until the destroy is run again
    "unfinished": {FindingKind.UNFINISHED.value, FindingKind.MISSING.value},
}


@dataclass(frozen=True)
class Case:
    op: str
    boundary: str
    expect: str  # untouched | interrupted | unfinished | recovered | done
    die_after_calls: int = 1

    @property
    def id(self) -> str:
        return f"{self.op}-{self.boundary}"


_COMMON = (
    ("intent-written", "untouched"),
    ("intent-committed", "interrupted"),
    ("hsm-done", "recovered"),
    ("outcome-written", "recovered"),
    ("outcome-committed", "done"),
)
CASES = [
    *(Case("create", b, e) for b, e in _COMMON),
    *(Case("rotate", b, e) for b, e in _COMMON),
    Case("destroy", "intent-written", "untouched"),
    Case("destroy", "intent-committed", "interrupted"),
    Case("destroy", "hsm-partial", "unfinished", die_after_calls=1),
    Case("destroy", "hsm-done", "recovered", die_after_calls=2),
    Case("destroy", "outcome-written", "recovered"),
    Case("destroy", "outcome-committed", "done"),
]


# -- driving the child ------------------------------------------------------------------------


def child(token: SoftHsm, team: Team, **request: Any) -> subprocess.CompletedProcess[str]:
    """Run crash_child.py on the suite's token and this test's database; secrets go on stdin."""
    team.clock.advance(300)  # the child's codes come after every step the parent used
    payload = {
        "module": token.module,
        "conf": str(token.conf),
        "token": token.label,
        "halves": token.pairs,
        "db": str(team.ws.store.path),
        "clock": team.clock(),
        "seeds": {n: team.seeds[n] for n in ("alice", "bob")},
        **request,
    }
    env = {k: v for k, v in os.environ.items() if k not in ("SSH_CONNECTION", "SSH_TTY")}
    env["SOFTHSM2_CONF"] = str(token.conf)
    return subprocess.run(
        [sys.executable, str(CHILD)],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def kill_at(token: SoftHsm, team: Team, case: Case, key_id: str = "") -> str:
    """Run the operation in a child that SIGKILLs itself at the boundary; returns the key id."""
    proc = child(
        token,
        team,
        mode="operate",
        op=case.op,
        boundary=case.boundary,
        die_after_calls=case.die_after_calls,
        key_id=key_id,
        label=f"crash-{case.id}",
        algorithm=ALGORITHM[case.op],
        purpose=PURPOSE[case.op],
    )
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stdout, proc.stderr[-2000:])
    note = json.loads(proc.stderr.strip().splitlines()[-1])
    assert note == {"boundary": case.boundary, "in_transaction": OPEN_TRANSACTION[case.boundary]}
    started = json.loads(proc.stdout.splitlines()[0])
    return str(started["key_id"])


def restart(token: SoftHsm, team: Team, case: Case, key_id: str, mode: str) -> dict[str, Any]:
    """A fresh process opens the same database and token and reconciles (twice), or retries."""
    proc = child(
        token,
        team,
        mode=mode,
        op=case.op,
        key_id=key_id,
        algorithm=ALGORITHM[case.op],
        watch=[templates.cka_id(key_id, n).hex() for n in (1, 2, 3)],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report: dict[str, Any] = json.loads(proc.stdout)
    return report


def prepare_key(team: Team, case: Case) -> str:
    """The key the operation works on, made in this (the parent) process: '' for create."""
    if case.op == "create":
        return ""
    ws = team.ws
    key = ws.create_key(
        label=f"crash-{case.id}",
        algorithm=ALGORITHM[case.op],
        purpose=PURPOSE[case.op],
        approvals=team.codes("alice", "bob"),
    )
    if case.op == "destroy":
        ws.run(ws.prepare(OpKind.KEY_ROTATE, key.id), team.codes("alice", "bob"))
        ws.run(ws.prepare(OpKind.KEY_SCHEDULE_DESTROY, key.id), team.codes("alice", "bob"))
        sealed_edit(
            ws,
            f"key:{key.id}",
            "UPDATE keys SET destroy_after = ? WHERE id = ?",
            ("2000-01-01T00:00:00.000000Z", key.id),
        )
    return key.id


# -- reading the outcome ----------------------------------------------------------------------


def mine(findings: list[dict[str, Any]], key_id: str) -> list[dict[str, Any]]:
    """Findings about this key (the suite's token also holds other tests' objects)."""
    out = []
    for f in findings:
        parsed = templates.parse_cka_id(bytes.fromhex(f["cka_id"])) if f["cka_id"] else None
        if f["key_id"] == key_id or (parsed is not None and parsed[0] == key_id):
            out.append(f)
    return out


def closing_events(team: Team, intent: AuditEvent) -> list[AuditEvent]:
    """Every event that closes this intent (an outcome naming it)."""
    events = team.ws.audit.events(key_id=intent.key_id, action=intent.action, limit=1000)
    return [e for e in events if e.outcome != "intent" and e.params.get("intent") == intent.seq]


def classes(algorithm: str) -> list[str]:
    if templates.ALGORITHMS[algorithm].symmetric:
        return ["SECRET_KEY"]
    return ["PRIVATE_KEY", "PUBLIC_KEY"]


# -- the test ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_kill_at_each_step_boundary_is_finished_or_reported_on_restart_never_done_twice(
    case: Case, team: Team, softhsm_token: SoftHsm
) -> None:
    ws = team.ws
    given = prepare_key(team, case)
    before = ws.store.keys.get(given) if given else None
    key_id = kill_at(softhsm_token, team, case, given)
    assert key_id == given or case.op == "create"
    kind = str(KINDS[case.op])
    version = (before.current_version + 1) if (before and case.op == "rotate") else 1

    # What the dead process left committed: exactly what its boundary says.
    intents = [e for e in ws.audit.events(key_id=key_id, action=kind) if e.outcome == "intent"]
    assert len(intents) == (0 if case.boundary == "intent-written" else 1)
    committed = [e for e in ws.audit.events(key_id=key_id, action=kind) if e.outcome != "intent"]
    assert len(committed) == (1 if case.boundary == "outcome-committed" else 0)

    report = restart(softhsm_token, team, case, key_id, "reconcile")
    first, second, token = report["first"], report["second"], report["token"]
    happened = case.expect in ("recovered", "done")

    # Reconciliation only reads the token: it never generates or destroys anything itself.
    assert report["hsm_calls"] == []
    assert report["open_after"] == 0
    assert report["open_before"] == (0 if case.expect in ("untouched", "done") else 1)
    assert report["open_by_scan_before"] == report["open_before"]  # the kept table is right

    # The interrupted operation is closed exactly once, by the outcome its boundary calls for.
    if case.expect == "untouched":
        assert intents == []
    else:
        (intent,) = intents
        (close,) = closing_events(team, intent)
        if case.expect == "done":
            assert (close.outcome, close.actor) == ("success", "alice+bob")
            assert "recovered" not in close.params
        elif case.expect == "recovered":
            assert (close.outcome, close.actor) == ("success", "reconcile")
            assert close.params["recovered"] is True
        else:
            assert (close.outcome, close.actor) == ("failure", "reconcile")
            assert close.params["error"] == "Interrupted"

    completed = [c for c in first["completed"] if c["key_id"] == key_id]
    assert completed == (
        [{"intent": intents[0].seq, "action": kind, "key_id": key_id}]
        if case.expect == "recovered"
        else []
    )

    # No divergence goes unreported: what is left over is a finding about this key.
    found = {f["kind"] for f in mine(first["findings"], key_id)}
    assert found == FINDINGS[case.expect]

    # A second run reports nothing new about the key and finishes nothing again.
    assert [c for c in second["completed"] if c["key_id"] == key_id] == []
    first_ids = {f["id"] for f in mine(first["findings"], key_id)}
    second_found = mine(second["findings"], key_id)
    assert {f["id"] for f in second_found} <= first_ids
    assert not {f["kind"] for f in second_found} & {"interrupted-operation", "unfinished-destroy"}

    # Token and registry: the token step happened exactly once, or not at all, and they agree.
    key = ws.store.keys.get(key_id)
    objects = {n: token[templates.cka_id(key_id, n).hex()] for n in (1, 2, 3)}
    pair = classes(ALGORITHM[case.op])
    if case.op == "create":
        assert objects[1]["classes"] == (pair if happened else [])
        assert objects[2]["classes"] == objects[3]["classes"] == []
        if happened:
            assert key is not None and key.state == KeyState.ACTIVE
            (v1,) = key.versions
            assert v1.kcv == objects[1]["check"]
        else:
            assert key is None
    elif case.op == "rotate":
        assert before is not None and key is not None
        assert objects[1]["classes"] == pair
        assert objects[1]["check"] == before.versions[0].fingerprint
        assert objects[2]["classes"] == (pair if happened else [])
        assert objects[3]["classes"] == []
        assert key.current_version == (version if happened else 1)
        states = [v.state for v in key.versions]
        assert states == (
            [KeyState.DEACTIVATED, KeyState.ACTIVE] if happened else [KeyState.ACTIVE]
        )
        if happened:
            assert key.versions[1].fingerprint == objects[2]["check"]
    else:
        assert before is not None and key is not None
        assert [v.version for v in key.versions] == [1, 2]
        if happened:
            assert objects[1]["classes"] == objects[2]["classes"] == []
            assert key.state == KeyState.DESTROYED
            assert {v.state for v in key.versions} == {KeyState.DESTROYED}
            if case.expect == "done":
                assert close.params["objects_destroyed"] == 2
        else:
            assert key.state == KeyState.DESTROY_SCHEDULED
            assert [v.state for v in key.versions] == [v.state for v in before.versions]
            survivors = [1, 2] if case.expect != "unfinished" else [2]
            for n in (1, 2):
                expected = pair if n in survivors else []
                assert objects[n]["classes"] == expected, n
                if expected:
                    assert objects[n]["check"] == before.versions[n - 1].kcv
        if case.expect == "unfinished":
            # Running the destroy again (fresh approvals) finishes it; v1 is not destroyed twice.
            again = restart(softhsm_token, team, case, key_id, "retry")
            assert again["result"]["objects_destroyed"] == 1
            assert mine(again["report"]["findings"], key_id) == []
            assert all(v["classes"] == [] for v in again["token"].values())
            assert ws.store.keys.get(key_id).state == KeyState.DESTROYED

    verdict = ws.audit.verify()
    assert verdict.ok, verdict.reason


def test_the_parent_sees_token_changes_made_by_another_process(
    team: Team, softhsm_token: SoftHsm, hsm: Hsm
) -> None:
    """SoftHSM2's file store is shared between processes: the assumption the other test uses
    when it reads the registry here while the token work happened in children."""
    destroy = Case("destroy", "outcome-committed", "done")
    key_id = prepare_key(team, destroy)
    v1, v2 = (v.cka_id for v in team.ws.get_key(key_id).versions)
    assert hsm.objects.kcv(v1)  # the parent has touched (and cached a handle for) the object
    kill_at(softhsm_token, team, destroy, key_id)
    assert hsm.objects.find(v1) is None and hsm.objects.find(v2) is None
    with pytest.raises(errors.ObjectGone):
        hsm.objects.kcv(v1)

    create = Case("create", "hsm-done", "recovered")
    made = kill_at(softhsm_token, team, create)
    found = hsm.objects.find(templates.cka_id(made, 1))
    assert found is not None and found.object_class == "SECRET_KEY"
