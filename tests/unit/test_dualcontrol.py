"""Dual control on a real SoftHSM2 token and SQLite file, with an injected clock."""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyotp
import pytest
import segno

from kmtui.core import errors
from kmtui.core.audit.export import write as write_export
from kmtui.core.control import totp
from kmtui.core.control.operations import ApprovalInput, Operation, OpKind, Requirement
from kmtui.core.control.totp import current_code
from kmtui.core.errors import ApprovalUnusable, ApproversLocked, ApproversRefused, SeedInUse
from kmtui.core.models import OperatorState
from kmtui.core.registry.db import Store
from kmtui.core.token.session import Hsm
from kmtui.service import Workstation
from tests.conftest import sealed_edit

STEP = 30
T0 = 56_666_667 * STEP + 10.0  # ten seconds into a time step
ONE = Requirement(quorum=1)
TWO = Requirement()
FULL_WIDTH = str.maketrans("0123456789", "".join(chr(0xFF10 + d) for d in range(10)))
ARABIC_INDIC = str.maketrans("0123456789", "".join(chr(0x0660 + d) for d in range(10)))


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def next_step(self, steps: int = 1) -> None:
        self.now += steps * STEP


@dataclass
class Bench:
    """A workstation's dual control, reopenable on the same file as after a crash."""

    path: Path
    hsm: Hsm
    clock: Clock
    store: Store
    dc: Workstation
    seeds: dict[str, str] = field(default_factory=dict)
    opened: list[Store] = field(default_factory=list)

    def reopen(self) -> tuple[Store, Workstation]:
        """A new Store and workstation on the same file; the old ones are left as they were."""
        store = Store.open(self.path)
        self.opened.append(store)
        return store, Workstation.assemble(self.hsm, store, clock=self.clock)

    def enroll(self, name: str, role: str = "custodian") -> str:
        enrollment = self.dc.operators.begin_enrollment(name, role)
        seed = pyotp.parse_uri(enrollment.otpauth_uri).secret
        self.dc.operators.confirm_enrollment(name, current_code(seed, self.clock.now))
        self.seeds[name] = seed
        return seed

    def approve(
        self, operation: Operation, inputs: list[ApprovalInput], requirement: Requirement
    ) -> list[int]:
        return self.dc.gate.approvals.approve(operation, inputs, requirement)

    def code(self, name: str, steps: int = 0) -> str:
        return current_code(self.seeds[name], self.clock.now + steps * STEP)

    def inputs(self, *names: str) -> list[ApprovalInput]:
        return [ApprovalInput(name, self.code(name)) for name in names]

    def wrong(self, name: str) -> str:
        """A well-formed code no step of the window accepts."""
        window = {self.code(name, s) for s in (-1, 0, 1)}
        return next(c for c in (f"{n:06d}" for n in range(0, 10**6, 7919)) if c not in window)

    def operator(self, name: str) -> dict[str, Any]:
        rows = self.store.rows("SELECT * FROM operators WHERE name = ?", (name,))
        return rows[0]

    def audit(self, action: str) -> list[dict[str, Any]]:
        rows = self.store.rows(
            "SELECT actor, params, outcome FROM audit_events WHERE action = ? ORDER BY seq",
            (action,),
        )
        return [{**row, "params": json.loads(row["params"])} for row in rows]

    def refused(self) -> list[tuple[str, str]]:
        return [
            (r["params"]["operator"], r["params"]["reason"]) for r in self.audit("approval.refused")
        ]

    def approvals(self) -> int:
        return int(self.store.rows("SELECT count(*) AS n FROM approvals")[0]["n"])

    def consume(
        self, ids: list[int], operation: Operation, on: tuple[Store, Workstation] | None = None
    ) -> None:
        """As the gate does: inside the transaction that runs the operation."""
        store, dc = on or (self.store, self.dc)
        with store.transaction():
            dc.gate.approvals.consume(ids, operation)


@pytest.fixture
def bench(hsm: Hsm, tmp_path: Path) -> Iterator[Bench]:
    path = tmp_path / "kmtui.db"
    store = Store.open(path)
    clock = Clock(T0)
    b = Bench(path, hsm, clock, store, Workstation.assemble(hsm, store, clock=clock))
    yield b
    for s in [store, *b.opened]:
        s.close()


@pytest.fixture
def team(bench: Bench) -> Bench:
    """Alice and Carol (custodians), Bob (officer), Dave (auditor), all active; a step later."""
    for name, role in (
        ("alice", "custodian"),
        ("bob", "officer"),
        ("carol", "custodian"),
        ("dave", "auditor"),
    ):
        bench.enroll(name, role)
    bench.clock.next_step()
    return bench


def op(kind: OpKind = OpKind.KEY_DESTROY, key_id: str = "k0123456789ab") -> Operation:
    return Operation(kind, key_id, {"reason": "test"})


def refusals_of(call: Callable[[], object], exc: type[ApproversRefused] = ApproversRefused) -> Any:
    with pytest.raises(exc) as info:
        call()
    return info.value


# -- the code window ----------------------------------------------------------------------------


@pytest.mark.parametrize("into_step", [0.0, 29.999])
@pytest.mark.parametrize(
    ("offset", "accepted"), [(-2, False), (-1, True), (0, True), (1, True), (2, False)]
)
def test_code_window_accepts_one_step_either_side_and_refuses_two(
    bench: Bench, offset: int, accepted: bool, into_step: float
) -> None:
    bench.enroll("alice")
    step = int(T0 // STEP) + 10
    bench.clock.now = step * STEP + into_step
    code = bench.code("alice", offset)

    def approve() -> list[int]:
        return bench.approve(op(), [ApprovalInput("alice", code)], ONE)

    if accepted:
        assert len(approve()) == 1
        assert bench.operator("alice")["last_step"] == step + offset
    else:
        assert refusals_of(approve).refusals == (("alice", "wrong"),)
        assert bench.operator("alice")["last_step"] == int(T0 // STEP)


# -- replay -------------------------------------------------------------------------------------


def test_a_code_replayed_for_the_same_operation_is_refused_as_replayed(team: Bench) -> None:
    operation, inputs = op(), team.inputs("alice", "bob")
    team.approve(operation, inputs, TWO)
    error = refusals_of(lambda: team.approve(operation, inputs, TWO))
    assert error.refusals == (("alice", "replayed"), ("bob", "replayed"))
    assert team.approvals() == 2


def test_a_code_replayed_for_a_different_operation_is_refused_as_replayed(team: Bench) -> None:
    inputs = team.inputs("alice", "bob")
    team.approve(op(), inputs, TWO)
    error = refusals_of(lambda: team.approve(op(OpKind.KEY_EXPORT), inputs, TWO))
    assert error.refusals == (("alice", "replayed"), ("bob", "replayed"))
    assert team.approvals() == 2


def test_a_code_accepted_one_step_ahead_cannot_be_replayed_a_step_later(team: Bench) -> None:
    ahead = team.code("alice", 1)
    team.approve(op(), [ApprovalInput("alice", ahead)], ONE)
    team.clock.next_step()  # the same code is now the current step's code
    error = refusals_of(lambda: team.approve(op(), [ApprovalInput("alice", ahead)], ONE))
    assert error.refusals == (("alice", "replayed"),)


# -- who may approve ----------------------------------------------------------------------------


def test_the_same_operator_twice_in_one_approval_is_refused_and_spends_no_code(
    team: Bench,
) -> None:
    before = team.operator("alice")["last_step"]
    inputs = [
        ApprovalInput("alice", team.code("alice")),
        ApprovalInput("alice", team.code("alice")),
    ]
    error = refusals_of(lambda: team.approve(op(), inputs, TWO))
    assert error.refusals == (("alice", "duplicate"),)
    assert team.operator("alice")["last_step"] == before
    assert team.approvals() == 0
    assert team.approve(op(), team.inputs("alice", "bob"), TWO)  # the code was not spent


def test_two_names_sharing_a_seed_are_refused_at_enrolment(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(totp, "new_seed", lambda: b"\x42" * 20)
    bench.enroll("alice")
    with pytest.raises(SeedInUse) as info:
        bench.dc.operators.begin_enrollment("alias", "officer")
    assert "another operator" in str(info.value)
    assert [o.name for o in bench.dc.operators.all()] == ["alice"]


def test_an_excluded_operator_is_refused(team: Bench) -> None:
    requirement = Requirement(exclude=frozenset({"alice"}))
    error = refusals_of(lambda: team.approve(op(), team.inputs("alice", "bob"), requirement))
    assert error.refusals == (("alice", "excluded"),)
    assert team.approvals() == 0


@pytest.mark.parametrize(
    ("names", "roles", "refused"),
    [
        (("alice", "dave"), frozenset({"custodian", "officer"}), "dave"),
        (("alice", "bob"), frozenset({"officer"}), "alice"),
    ],
)
def test_an_operator_whose_role_may_not_approve_is_refused(
    team: Bench, names: tuple[str, str], roles: frozenset[str], refused: str
) -> None:
    requirement = Requirement(roles=roles)
    error = refusals_of(lambda: team.approve(op(), team.inputs(*names), requirement))
    assert error.refusals == ((refused, "role"),)
    assert team.approvals() == 0


def test_unknown_and_pending_and_revoked_operators_are_refused(team: Bench) -> None:
    team.dc.operators.begin_enrollment("erin", "custodian")
    team.dc.operators.set_state("carol", OperatorState.REVOKED)
    inputs = [ApprovalInput(n, "123456") for n in ("zed", "erin", "carol")]
    error = refusals_of(lambda: team.approve(op(), inputs, Requirement(quorum=3)))
    assert error.refusals == (("zed", "unknown"), ("erin", "inactive"), ("carol", "inactive"))


def test_fewer_approvers_than_the_quorum_is_refused_and_spends_no_code(team: Bench) -> None:
    before = team.operator("alice")["last_step"]
    with pytest.raises(errors.ApprovalRefused, match="needs 2 approvals"):
        team.approve(op(), team.inputs("alice"), TWO)
    assert team.operator("alice")["last_step"] == before
    assert team.audit("approval.refused")[-1]["params"]["reason"] == "quorum"


def test_quorum_zero_approves_nothing_and_checks_nothing(team: Bench) -> None:
    events = len(team.audit("approval.refused"))
    assert team.approve(op(), [ApprovalInput("nobody", "x")], Requirement(quorum=0)) == []
    assert len(team.audit("approval.refused")) == events


def test_every_code_is_checked_and_each_failed_approver_is_named_without_codes(
    team: Bench,
) -> None:
    wrong, good = team.wrong("alice"), team.code("carol")
    inputs = [
        ApprovalInput("alice", wrong),
        ApprovalInput("bob", "12345"),
        ApprovalInput("carol", good),
    ]
    error = refusals_of(lambda: team.approve(op(), inputs, Requirement(quorum=3)))
    assert error.refusals == (("alice", "wrong"), ("bob", "malformed"))
    assert "alice" in str(error) and "bob" in str(error)
    assert wrong not in str(error) and good not in str(error) and "12345" not in str(error)
    assert (team.operator("alice")["failures"], team.operator("bob")["failures"]) == (1, 1)
    assert team.operator("carol")["last_step"] == int(team.clock.now // STEP)  # spent anyway
    assert team.approvals() == 0


# -- code form ----------------------------------------------------------------------------------

MALFORMED: dict[str, Callable[[str], str]] = {
    "full-width digits": lambda c: c.translate(FULL_WIDTH),
    "arabic-indic digits": lambda c: c.translate(ARABIC_INDIC),
    "leading space": lambda c: " " + c,
    "trailing space": lambda c: c + " ",
    "inner space": lambda c: c[:3] + " " + c[3:],
    "trailing newline": lambda c: c + "\n",
    "empty": lambda c: "",
    "five digits": lambda c: c[:5],
    "seven digits": lambda c: c + "0",
    "leading plus, six chars": lambda c: "+" + c[1:],
    "leading plus, seven chars": lambda c: "+" + c,
    "one megabyte": lambda c: c + "0" * 1_000_000,
}


@pytest.mark.parametrize("form", MALFORMED)
def test_a_code_not_exactly_six_ascii_digits_is_refused_as_malformed(
    team: Bench, form: str
) -> None:
    code = team.code("alice")
    bad = MALFORMED[form](code)
    error = refusals_of(lambda: team.approve(op(), [ApprovalInput("alice", bad)], ONE))
    assert error.refusals == (("alice", "malformed"),)
    assert len(str(error)) < 500 and (not bad.strip() or bad not in str(error))
    assert team.operator("alice")["failures"] == 1
    assert team.refused()[-1] == ("alice", "malformed")
    assert team.approve(op(), [ApprovalInput("alice", code)], ONE)  # the digits were valid


def test_pyotp_alone_would_accept_full_width_digits(team: Bench) -> None:
    """Why the ASCII check must come first: the hazard the malformed test guards against."""
    code = team.code("alice")
    assert pyotp.TOTP(team.seeds["alice"]).verify(
        code.translate(FULL_WIDTH), for_time=int(team.clock.now)
    )


def test_a_code_that_is_not_a_string_is_refused_as_malformed(team: Bench) -> None:
    code: Any = int(team.code("alice"))
    error = refusals_of(lambda: team.approve(op(), [ApprovalInput("alice", code)], ONE))
    assert error.refusals == (("alice", "malformed"),)


# -- throttling ---------------------------------------------------------------------------------


def test_five_consecutive_failures_lock_the_operator_and_the_lock_survives_a_reopen(
    team: Bench,
) -> None:
    def attempt() -> list[int]:
        return team.approve(op(), [ApprovalInput("alice", team.wrong("alice"))], ONE)

    for n in range(1, 5):
        assert refusals_of(attempt).refusals == (("alice", "wrong"),)
        assert (team.operator("alice")["state"], team.operator("alice")["failures"]) == (
            "active",
            n,
        )
    fifth = refusals_of(attempt, ApproversLocked)
    assert isinstance(fifth, errors.OperatorLocked) and "unlock" in str(fifth)
    assert team.operator("alice")["state"] == "locked"
    assert team.audit("operator.locked")[-1]["params"] == {
        "operator": "alice",
        "reason": "failures",
        "failures": 5,
        "subject": "operator:alice",
    }
    good = [ApprovalInput("alice", team.code("alice"))]
    assert refusals_of(lambda: team.approve(op(), good, ONE), ApproversLocked).refusals == (
        ("alice", "locked"),
    )
    team.store.close()
    _, reopened = team.reopen()
    assert reopened.operators.get("alice").state is OperatorState.LOCKED
    assert refusals_of(
        lambda: reopened.gate.approvals.approve(op(), good, ONE), ApproversLocked
    ).refusals == (("alice", "locked"),)


def test_a_correct_code_resets_the_consecutive_failure_count(team: Bench) -> None:
    def fail() -> None:
        with pytest.raises(ApproversRefused):
            team.approve(op(), [ApprovalInput("alice", team.wrong("alice"))], ONE)

    for _ in range(4):
        fail()
    team.approve(op(), team.inputs("alice"), ONE)
    assert team.operator("alice")["failures"] == 0
    team.clock.next_step()
    for _ in range(4):
        fail()
    assert (team.operator("alice")["state"], team.operator("alice")["failures"]) == ("active", 4)


def test_unlock_resets_failures_and_codes_are_accepted_again(team: Bench) -> None:
    for _ in range(5):
        with pytest.raises(ApproversRefused):
            team.approve(op(), [ApprovalInput("alice", team.wrong("alice"))], ONE)
    assert team.dc.operators.get("alice").state is OperatorState.LOCKED
    unlocked = team.dc.operators.set_state("alice", OperatorState.ACTIVE)
    assert (unlocked.state, unlocked.failures) == (OperatorState.ACTIVE, 0)
    assert team.approve(op(), team.inputs("alice"), ONE)


@pytest.mark.parametrize(
    ("start", "target"),
    [("pending", OperatorState.ACTIVE), ("revoked", OperatorState.ACTIVE), ("active", "pending")],
)
def test_set_state_never_activates_without_confirmation_nor_revives_a_revoked_operator(
    team: Bench, start: str, target: OperatorState | str
) -> None:
    if start == "pending":
        team.dc.operators.begin_enrollment("alice", "custodian")
    elif start == "revoked":
        team.dc.operators.set_state("alice", OperatorState.REVOKED)
    with pytest.raises(errors.UsageError):
        team.dc.operators.set_state("alice", target)
    assert team.dc.operators.get("alice").state.value == start


# -- expiry and spending ------------------------------------------------------------------------


@pytest.mark.parametrize(("later", "usable"), [(300, True), (301, False)])
def test_an_approval_is_valid_at_its_expiry_second_and_refused_one_second_later(
    team: Bench, later: int, usable: bool
) -> None:
    operation = op()
    ids = team.approve(operation, team.inputs("alice", "bob"), TWO)
    team.clock.now += later
    if usable:
        team.consume(ids, operation)
        assert all(r["executed_at"] for r in team.store.rows("SELECT * FROM approvals"))
    else:
        with pytest.raises(ApprovalUnusable) as info:
            team.consume(ids, operation)
        assert info.value.reason == "expired"
        assert not any(r["executed_at"] for r in team.store.rows("SELECT * FROM approvals"))


def test_an_approval_consumed_twice_is_refused_the_second_time_also_after_a_reopen(
    team: Bench,
) -> None:
    operation = op()
    ids = team.approve(operation, team.inputs("alice", "bob"), TWO)
    team.consume(ids, operation)
    for where in ((team.store, team.dc), team.reopen()):
        with pytest.raises(ApprovalUnusable) as info:
            team.consume(ids, operation, where)
        assert info.value.reason == "spent"


def test_an_approval_cannot_be_consumed_for_a_different_operation(team: Bench) -> None:
    operation = op()
    ids = team.approve(operation, team.inputs("alice", "bob"), TWO)
    same_but_new_nonce = Operation(operation.kind, operation.key_id, operation.params)
    for other in (op(OpKind.KEY_EXPORT), same_but_new_nonce):
        with pytest.raises(ApprovalUnusable) as info:
            team.consume(ids, other)
        assert info.value.reason == "wrong-operation"
    team.consume(ids, operation)  # the refusals rolled back: still spendable once, for its own


def test_an_approval_from_an_operator_revoked_since_cannot_be_consumed(team: Bench) -> None:
    operation = op()
    ids = team.approve(operation, team.inputs("alice", "bob"), TWO)
    team.dc.operators.set_state("bob", OperatorState.REVOKED)
    with pytest.raises(ApprovalUnusable) as info:
        team.consume(ids, operation)
    assert info.value.reason == "inactive"


def test_approvals_from_one_operator_in_two_rounds_count_once(team: Bench) -> None:
    operation = op()
    first = team.approve(operation, team.inputs("alice", "bob"), TWO)
    team.clock.next_step()
    second = team.approve(operation, team.inputs("alice", "carol"), TWO)
    with pytest.raises(ApprovalUnusable) as info:
        team.consume([first[0], second[0]], operation)
    assert info.value.reason == "duplicate"


def test_approve_refuses_to_run_inside_a_transaction(team: Bench) -> None:
    with team.store.transaction(), pytest.raises(RuntimeError, match="outside"):
        team.approve(op(), team.inputs("alice", "bob"), TWO)


# -- crash safety and secrecy -------------------------------------------------------------------


def test_a_crash_after_approve_leaves_the_step_committed_so_the_code_is_refused(
    team: Bench,
) -> None:
    inputs = team.inputs("alice", "bob")
    team.approve(op(), inputs, TWO)
    step = int(team.clock.now // STEP)
    # The operation never ran: another process opens the file as it is on disk.
    _, after_crash = team.reopen()
    assert (
        after_crash.operators.get("alice").last_step == step
        and after_crash.operators.get("bob").last_step == step
    )
    error = refusals_of(lambda: after_crash.gate.approvals.approve(op(), inputs, TWO))
    assert error.refusals == (("alice", "replayed"), ("bob", "replayed"))


_HEX64 = re.compile(r"[0-9a-f]{64}")
_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def _derived_fields_blanked(text: str) -> str:
    """Hashes and timestamps are computed, not given: blank them so chance digits do not match."""
    return _TIMESTAMP.sub("<ts>", _HEX64.sub("<hex>", text))


def test_audit_rows_and_export_of_refusals_hold_no_code(team: Bench) -> None:
    wrong, good_alice, good_bob = team.wrong("alice"), team.code("alice"), team.code("bob")
    with pytest.raises(ApproversRefused):
        team.approve(op(), [ApprovalInput("alice", wrong), ApprovalInput("bob", good_bob)], TWO)
    with pytest.raises(ApproversRefused):  # bob's code was spent above: a replay
        team.approve(
            op(), [ApprovalInput("alice", good_alice), ApprovalInput("bob", good_bob)], TWO
        )
    with pytest.raises(ApproversRefused):
        team.approve(op(), [ApprovalInput("carol", team.code("carol").translate(FULL_WIDTH))], ONE)
    assert set(team.refused()) >= {("alice", "wrong"), ("bob", "replayed"), ("carol", "malformed")}
    table = _derived_fields_blanked(json.dumps(team.store.rows("SELECT * FROM audit_events")))
    export = io.StringIO()
    write_export(team.store, export)
    exported = _derived_fields_blanked(export.getvalue())
    assert all(r["params"]["digest"] for r in team.audit("approval.refused"))
    for code in (wrong, good_alice, good_bob, team.code("carol")):
        assert code not in table and code not in exported
        assert (
            code.translate(FULL_WIDTH) not in table and code.translate(FULL_WIDTH) not in exported
        )


def _database_bytes(path: Path) -> dict[str, bytes]:
    files = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
    return {f.name: f.read_bytes() for f in files if f.exists()}


def test_the_database_files_hold_no_seed_raw_base32_or_hex(team: Bench) -> None:
    pending = team.dc.operators.begin_enrollment("erin", "officer")
    team.seeds["erin"] = pyotp.parse_uri(pending.otpauth_uri).secret
    team.approve(op(), team.inputs("alice", "bob"), TWO)
    seeds = [base64.b32decode(s) for s in team.seeds.values()]
    assert len(seeds) == 5
    sealed = [bytes(o.sealed_seed) for o in team.dc.operators.all()]
    forms = [
        form
        for seed in seeds
        for form in (
            seed,
            base64.b32encode(seed),
            base64.b32encode(seed).lower(),
            seed.hex().encode(),
            seed.hex().upper().encode(),
        )
    ]
    for moment in ("open", "closed"):
        if moment == "closed":
            team.store.close()
        files = _database_bytes(team.path)
        if moment == "open":
            assert len(files.get("kmtui.db-wal", b"")) > 0  # the WAL is scanned, not skipped
        assert all(any(s in data for data in files.values()) for s in sealed)  # scanner works
        for name, data in files.items():
            assert not [f for f in forms if f in data], f"a seed form was found in {name}"


def test_a_tampered_sealed_seed_is_refused_as_a_registry_change_before_any_code(
    team: Bench,
) -> None:
    blob = bytearray(team.operator("alice")["sealed_seed"])
    blob[-1] ^= 0x01
    with team.store.transaction() as conn:
        conn.execute("UPDATE operators SET sealed_seed = ? WHERE name = 'alice'", (bytes(blob),))
    before, bob = team.operator("alice"), team.operator("bob")
    with pytest.raises(errors.RegistryChanged) as raised:
        team.approve(op(), team.inputs("alice", "bob"), TWO)
    assert raised.value.subjects == ("operator:alice",)
    assert "REGISTRY CHANGED OUTSIDE KMTUI" in str(raised.value)
    assert team.operator("alice")["failures"] == before["failures"]
    assert team.operator("bob")["last_step"] == bob["last_step"]  # no code was spent
    assert team.approvals() == 0


def test_a_tampered_seed_sealed_by_kmtui_still_fails_closed_as_unsealable(team: Bench) -> None:
    """Belt and braces: a blob the token cannot open is refused even when its row is sealed."""
    blob = bytearray(team.operator("alice")["sealed_seed"])
    blob[-1] ^= 0x01
    sealed_edit(
        team.dc,
        "operator:alice",
        "UPDATE operators SET sealed_seed = ? WHERE name = 'alice'",
        (bytes(blob),),
    )
    error = refusals_of(lambda: team.approve(op(), team.inputs("alice", "bob"), TWO))
    assert ("alice", "unsealable") in error.refusals
    assert "Re-enrol" in str(error)
    assert team.approvals() == 0


def test_a_sealed_seed_copied_to_another_operator_does_not_unseal(team: Bench) -> None:
    copy = "UPDATE operators SET sealed_seed = (SELECT sealed_seed FROM operators WHERE name = "
    with team.store.transaction() as conn:
        conn.execute(copy + "'alice') WHERE name = 'carol'")
    inputs = [ApprovalInput("carol", team.code("alice"))]
    with pytest.raises(errors.RegistryChanged):  # copied by hand: the registry refuses it
        team.approve(op(), inputs, ONE)
    sealed_edit(team.dc, "operator:carol", copy + "'alice') WHERE name = 'carol'")
    error = refusals_of(lambda: team.approve(op(), inputs, ONE))  # and the token refuses it too
    assert error.refusals == (("carol", "unsealable"),)


# -- enrolment ----------------------------------------------------------------------------------


def test_enrollment_repr_and_str_hide_the_uri_and_the_qr_code(bench: Bench) -> None:
    enrollment = bench.dc.operators.begin_enrollment("alice", "custodian")
    secret = pyotp.parse_uri(enrollment.otpauth_uri).secret
    for text in (repr(enrollment), str(enrollment), f"{enrollment}"):
        assert "alice" in text
        assert enrollment.otpauth_uri not in text and secret not in text
        assert "otpauth" not in text.replace("otpauth_uri=<hidden>", "")
        assert "\u2580" not in text and "\u2584" not in text


def test_enrollment_uri_is_standard_totp_and_its_qr_text_encodes_it(bench: Bench) -> None:
    enrollment = bench.dc.operators.begin_enrollment("alice", "custodian")
    totp = pyotp.parse_uri(enrollment.otpauth_uri)
    assert isinstance(totp, pyotp.TOTP)
    assert (totp.issuer, totp.name, totp.digits, totp.interval) == ("kmtui", "alice", 6, 30)
    assert totp.digest().name == "sha1" and len(base64.b32decode(totp.secret)) == 20
    lines = enrollment.qr_text.splitlines()
    assert "\x1b" not in enrollment.qr_text
    matrix = segno.make(enrollment.otpauth_uri, error="m").matrix
    # Each text row holds two module rows; a light module (1 here) is drawn, a dark one is blank.
    border = 4
    cells = {" ": (1, 1), "\u2580": (0, 1), "\u2584": (1, 0), "\u2588": (0, 0)}
    rows: list[list[int]] = []
    for line in lines:
        top, bottom = zip(*(cells[ch] for ch in line), strict=True)
        rows += [list(top), list(bottom)]
    inner = [row[border : border + len(matrix)] for row in rows[border : border + len(matrix)]]
    assert inner == [list(r) for r in matrix]


@pytest.mark.parametrize(
    "name",
    [
        "",
        "a" * 33,
        "al ice",
        "alice\n",
        "ålice",
        "../x",
        "-alice",
        "123456",
        "a\x1b[31m",
        "\uff41lice",
    ],
)
def test_an_invalid_operator_name_is_refused_without_being_echoed(bench: Bench, name: str) -> None:
    with pytest.raises(errors.UsageError) as info:
        bench.dc.operators.begin_enrollment(name, "custodian")
    assert "not a valid operator name" in str(info.value)
    assert not name or name not in str(info.value)
    assert bench.dc.operators.all() == []


@pytest.mark.parametrize("name", ["a", "alice.b-c_d", "A" * 32, "007x"])
def test_a_valid_operator_name_is_accepted(bench: Bench, name: str) -> None:
    bench.dc.operators.begin_enrollment(name, "officer")
    assert bench.dc.operators.get(name).state is OperatorState.PENDING


def test_a_name_differing_only_in_case_is_refused(bench: Bench) -> None:
    bench.dc.operators.begin_enrollment("alice", "custodian")
    with pytest.raises(errors.UsageError, match="differ only in case"):
        bench.dc.operators.begin_enrollment("Alice", "custodian")


def test_confirmation_needs_a_code_of_the_new_seed_and_makes_the_operator_active(
    bench: Bench,
) -> None:
    enrollment = bench.dc.operators.begin_enrollment("alice", "custodian")
    seed = pyotp.parse_uri(enrollment.otpauth_uri).secret
    with pytest.raises(ApproversRefused):
        bench.dc.operators.confirm_enrollment(
            "alice", current_code(pyotp.random_base32(), bench.clock.now)
        )
    assert bench.dc.operators.get("alice").state is OperatorState.PENDING
    confirmed = bench.dc.operators.confirm_enrollment("alice", current_code(seed, bench.clock.now))
    assert (confirmed.state, confirmed.failures) == (OperatorState.ACTIVE, 0)
    assert confirmed.last_step == int(bench.clock.now // STEP)
    assert bench.audit("operator.confirmed")[-1]["params"]["operator"] == "alice"


def test_a_pending_operator_out_of_attempts_must_enrol_again(bench: Bench) -> None:
    first = pyotp.parse_uri(
        bench.dc.operators.begin_enrollment("alice", "custodian").otpauth_uri
    ).secret
    bench.seeds["alice"] = first
    for _ in range(5):
        with pytest.raises(ApproversRefused):
            bench.dc.operators.confirm_enrollment("alice", bench.wrong("alice"))
    with pytest.raises(ApproversLocked, match="enrolment again"):
        bench.dc.operators.confirm_enrollment("alice", bench.code("alice"))
    assert bench.dc.operators.get("alice").state is OperatorState.PENDING
    again = pyotp.parse_uri(
        bench.dc.operators.begin_enrollment("alice", "custodian").otpauth_uri
    ).secret
    confirmed = bench.dc.operators.confirm_enrollment("alice", current_code(again, bench.clock.now))
    assert confirmed.state is OperatorState.ACTIVE


def test_re_enrolment_replaces_the_seed_and_old_codes_stop_working(team: Bench) -> None:
    old = team.seeds["alice"]
    team.enroll("alice")  # confirms with the new seed at the current step
    team.clock.next_step()
    assert team.seeds["alice"] != old
    old_code = current_code(old, team.clock.now)
    error = refusals_of(lambda: team.approve(op(), [ApprovalInput("alice", old_code)], ONE))
    assert error.refusals == (("alice", "wrong"),)


def test_get_of_an_unknown_operator_says_how_to_list_them(bench: Bench) -> None:
    with pytest.raises(errors.UsageError, match="operators list"):
        bench.dc.operators.get("nobody")
