"""Random lifecycle sequences through the real gate on SoftHSM2: after every step the registry, the
token, reconciliation and the audit chain all agree with an independent model of the key states."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from pkcs11 import ObjectClass

from kmtui.core import errors
from kmtui.core.control import lifecycle, policy
from kmtui.core.control.lifecycle import RevocationReason
from kmtui.core.control.operations import OpKind
from kmtui.core.keys import reconcile
from kmtui.core.models import KeyState
from kmtui.core.registry.db import Store
from kmtui.core.token import templates
from kmtui.core.token.session import Hsm
from kmtui.service import Workstation
from tests.conftest import Clock, SoftHsm, Team, sealed_edit

S = KeyState
GONE = (S.DESTROYED, S.DESTROYED_COMPROMISED)
SLOW_RSA = ("RSA-3072", "RSA-4096")  # seconds per key on SoftHSM; RSA-2048 covers the RSA path
CHOICES = sorted(
    (algorithm, purpose)
    for purpose, names in policy.Rules().algorithms.items()
    for algorithm in names
    if algorithm not in SLOW_RSA
)

MAX_KEYS = 3  # few keys, so that random steps reach the deep states (scheduled, destroyed)

# The session's token, handed over by the test function (a state machine cannot take fixtures).
_TOKEN: dict[str, Any] = {}


@dataclass
class Expected:
    """What the model says one key is: its state and each version's state, in version order."""

    algorithm: str
    purpose: str
    state: KeyState
    versions: list[KeyState]
    before_destroy: KeyState | None = None
    compromised_at: str = ""
    calls: list[str] = field(default_factory=list)


class LifecycleMachine(RuleBasedStateMachine):
    """Drives create/rotate/suspend/resume/deactivate/revoke/destroy through `Workstation.run`."""

    keys = Bundle("keys")

    def __init__(self) -> None:
        super().__init__()
        hsm: Hsm = _TOKEN["hsm"]
        self.directory = Path(tempfile.mkdtemp(dir=_TOKEN["base"]))
        self.store = Store.open(self.directory / "kmtui.db")
        clock = Clock()
        self.ws = Workstation.assemble(hsm, self.store, clock=clock)
        self.team = Team(self.ws, clock, {})
        self.team.enroll("alice", "custodian")
        self.team.enroll("bob", "custodian")
        self.model: dict[str, Expected] = {}

    def teardown(self) -> None:
        self.store.close()

    # -- driving the gate ---------------------------------------------------------------------

    def attempt(self, key_id: str, kind: OpKind, legal: bool, **params: Any) -> dict[str, Any]:
        """Run `kind` on the key; refused exactly when the model says it is illegal."""
        expected = self.model[key_id]
        expected.calls.append(str(kind))
        before = self.ws.get_key(key_id)
        last_seq = self.ws.audit.events(limit=1)[0].seq
        try:
            prepared = self.ws.prepare(kind, key_id, **params)
            codes = self.team.codes("alice", "bob") if prepared.quorum else []
            result = self.ws.run(prepared, codes)
        except errors.PolicyRefused as exc:
            assert not legal, f"{kind} from {expected.state} was refused: {exc.message}"
            after = self.ws.get_key(key_id)
            assert (after.state, after.versions) == (before.state, before.versions)
            written = self.ws.audit.events(after_seq=last_seq, newest_first=False)
            assert all(e.outcome == "refused" for e in written)  # no intent, nothing done
            return {}
        assert legal, f"{kind} from {expected.state} should have been refused"
        success, intent = self.ws.audit.events(key_id=key_id, action=str(kind), limit=2)
        assert (intent.outcome, success.outcome) == ("intent", "success")
        assert success.params["intent"] == intent.seq == result.intent
        assert result.audit_seq == success.seq
        return result

    def legal(self, key_id: str, kind: OpKind) -> bool:
        return (self.model[key_id].state, kind) in lifecycle.TRANSITIONS

    # -- rules ----------------------------------------------------------------------------------

    @initialize(target=keys, choice=st.sampled_from(CHOICES))
    def first_key(self, choice: tuple[str, str]) -> str:
        return self.create_key(*choice)

    @precondition(lambda self: len(self.model) < MAX_KEYS)
    @rule(target=keys, choice=st.sampled_from(CHOICES))
    def create(self, choice: tuple[str, str]) -> str:
        return self.create_key(*choice)

    def create_key(self, algorithm: str, purpose: str) -> str:
        key = self.ws.create_key(
            label=f"sm-{algorithm}-{purpose}",
            algorithm=algorithm,
            purpose=purpose,
            approvals=self.team.codes("alice", "bob"),
        )
        assert key.state == S.ACTIVE and [v.version for v in key.versions] == [1]
        self.model[key.id] = Expected(algorithm, purpose, S.ACTIVE, [S.ACTIVE])
        return key.id

    @rule(key_id=keys)
    def rotate(self, key_id: str) -> None:
        m = self.model[key_id]
        result = self.attempt(key_id, OpKind.KEY_ROTATE, self.legal(key_id, OpKind.KEY_ROTATE))
        if result:
            m.versions[-1] = S.DEACTIVATED  # the default policy retires the previous version
            m.versions.append(S.ACTIVE)
            assert result.facts["version"] == len(m.versions)

    @rule(key_id=keys)
    def suspend(self, key_id: str) -> None:
        if self.attempt(key_id, OpKind.KEY_SUSPEND, self.legal(key_id, OpKind.KEY_SUSPEND)):
            self.model[key_id].state = S.SUSPENDED

    @rule(key_id=keys)
    def resume(self, key_id: str) -> None:
        if self.attempt(key_id, OpKind.KEY_RESUME, self.legal(key_id, OpKind.KEY_RESUME)):
            self.model[key_id].state = S.ACTIVE

    @rule(key_id=keys)
    def deactivate(self, key_id: str) -> None:
        m = self.model[key_id]
        if self.attempt(key_id, OpKind.KEY_DEACTIVATE, self.legal(key_id, OpKind.KEY_DEACTIVATE)):
            m.state = m.versions[-1] = S.DEACTIVATED

    @rule(key_id=keys, reason=st.sampled_from(list(RevocationReason)))
    def revoke(self, key_id: str, reason: RevocationReason) -> None:
        m = self.model[key_id]
        legal = self.legal(key_id, OpKind.KEY_REVOKE)
        compromise = reason.compromise or m.state == S.COMPROMISED
        if self.attempt(key_id, OpKind.KEY_REVOKE, legal, reason=reason.value):
            m.state = m.versions[-1] = S.COMPROMISED if compromise else S.DEACTIVATED
            if compromise and not m.compromised_at:  # dated once, by the first report
                m.compromised_at = self.ws.get_key(key_id).compromised_at

    @rule(key_id=keys)
    def schedule_destroy(self, key_id: str) -> None:
        m = self.model[key_id]
        legal = self.legal(key_id, OpKind.KEY_SCHEDULE_DESTROY)
        if self.attempt(key_id, OpKind.KEY_SCHEDULE_DESTROY, legal):
            m.before_destroy, m.state = m.state, S.DESTROY_SCHEDULED

    @rule(key_id=keys)
    def cancel_destroy(self, key_id: str) -> None:
        m = self.model[key_id]
        legal = self.legal(key_id, OpKind.KEY_CANCEL_DESTROY)
        if self.attempt(key_id, OpKind.KEY_CANCEL_DESTROY, legal):
            assert m.before_destroy is not None
            m.state, m.before_destroy = m.before_destroy, None

    @rule(key_id=keys, waited=st.booleans())
    def destroy(self, key_id: str, waited: bool) -> None:
        """Destroy once the waiting period has passed (set in the past); refused before it."""
        m = self.model[key_id]
        if waited and m.state == S.DESTROY_SCHEDULED:
            sealed_edit(
                self.ws,
                f"key:{key_id}",
                "UPDATE keys SET destroy_after = ? WHERE id = ?",
                ("2000-01-01T00:00:00.000000Z", key_id),
            )
        legal = self.legal(key_id, OpKind.KEY_DESTROY) and waited
        live = sum(v not in GONE for v in m.versions)
        result = self.attempt(key_id, OpKind.KEY_DESTROY, legal)
        if result:
            target = S.DESTROYED_COMPROMISED if m.compromised_at else S.DESTROYED
            m.state, m.before_destroy = target, None
            m.versions = [target] * len(m.versions)
            per_version = 1 if templates.ALGORITHMS[m.algorithm].symmetric else 2
            assert result.facts["objects_destroyed"] == live * per_version

    @rule(key_id=keys)
    def self_check(self, key_id: str) -> None:
        m = self.model[key_id]
        legal = lifecycle.Use.CHECK in lifecycle.ALLOWED_USES[m.state]
        assert legal == self.legal(key_id, OpKind.KEY_SELFCHECK)
        result = self.attempt(key_id, OpKind.KEY_SELFCHECK, legal)
        if result:
            verdicts = {
                k: v for k, v in result.facts["checks"].items() if k not in ("kcv", "fingerprint")
            }
            assert "registry-match" in verdicts and set(verdicts.values()) == {"pass"}

    # -- after every step ----------------------------------------------------------------------

    @invariant()
    def registry_matches_model_and_token(self) -> None:
        hsm = self.ws.hsm
        for key_id, m in self.model.items():
            key = self.ws.get_key(key_id)
            history = " -> ".join(m.calls)
            assert key.state == m.state, history
            assert [v.state for v in key.versions] == m.versions, history
            assert key.current_version == len(m.versions), history
            assert key.compromised_at == m.compromised_at, history
            symmetric = templates.ALGORITHMS[m.algorithm].symmetric
            classes = (
                {ObjectClass.SECRET_KEY}
                if symmetric
                else {ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY}
            )
            for version in key.versions:
                if version.state in GONE:
                    assert hsm.objects.find(version.cka_id) is None, (version.version, history)
                    continue
                for cls in classes:
                    assert hsm.objects.find(version.cka_id, cls) is not None, (version.version, cls)
                if symmetric:
                    assert version.kcv and hsm.objects.kcv(version.cka_id) == version.kcv
                else:
                    assert version.fingerprint
                    assert hsm.objects.fingerprint(version.cka_id) == version.fingerprint
            # Nothing generated beyond the registered versions (a refused rotate made no object).
            assert hsm.objects.find(templates.cka_id(key_id, len(m.versions) + 1)) is None, history

    @invariant()
    def reconcile_finds_nothing_and_every_intent_has_an_outcome(self) -> None:
        assert self.ws.reconciler.open_intents() == []
        assert self.ws.store.keys.open_intents_by_scan() == []  # the kept table agrees with a scan
        report = self.ws.reconciler.run()
        assert report.completed == []
        mine = [f.as_dict() for f in report.findings if self._mine(f)]
        assert mine == []

    @invariant()
    def audit_chain_verifies(self) -> None:
        result = self.ws.audit.verify()
        assert result.ok, result.reason

    def _mine(self, finding: reconcile.Finding) -> bool:
        if finding.key_id in self.model:
            return True
        parsed = templates.parse_cka_id(bytes.fromhex(finding.cka_id)) if finding.cka_id else None
        return parsed is not None and parsed[0] in self.model


@pytest.mark.slow
def test_random_lifecycle_sequences_keep_registry_token_and_audit_in_agreement(
    hsm: Hsm, softhsm_token: SoftHsm, tmp_path_factory: pytest.TempPathFactory
) -> None:
    _TOKEN.update(hsm=hsm, base=tmp_path_factory.mktemp("stateful"))
    try:
        run_state_machine_as_test(
            LifecycleMachine,
            settings=settings(
                max_examples=15,
                stateful_step_count=25,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
    finally:
        _TOKEN.clear()


def test_revoking_a_compromised_key_again_never_moves_its_compromise_date_later(
    team: Team,
) -> None:
    ws = team.ws
    key = ws.create_key(label="leaked", algorithm="AES-256", approvals=team.codes("alice", "bob"))
    first = "2020-01-01T00:00:00.000000Z"
    for reason, when in (("key-compromise", first), ("ca-compromise", None)):
        params = {"reason": reason} | ({"compromised_at": when} if when else {})
        prepared = ws.prepare(OpKind.KEY_REVOKE, key.id, **params)
        ws.run(prepared, team.codes("alice", "bob"))
    revoked = ws.get_key(key.id)
    assert revoked.state == S.COMPROMISED
    assert revoked.compromised_at == first
