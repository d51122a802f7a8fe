"""Lifecycle sequences through the real gate on SoftHSM2, judged by a model of the key states that
is written here from NIST SP 800-57 Part 1 Rev. 5 section 7 and kmtui's README, never read from
kmtui's own table: after every step the registry, the token, reconciliation and the audit chain
agree with the model, and the gate refuses exactly the moves the model has no transition for."""

from __future__ import annotations

import itertools
import tempfile
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any
from unittest import mock

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
from pkcs11 import Attribute, ObjectClass

from kmtui.core import errors
from kmtui.core.control import lifecycle, policy
from kmtui.core.control.operations import OpKind
from kmtui.core.keys import findings
from kmtui.core.models import Key, KeyState
from kmtui.core.registry.db import Store
from kmtui.core.token import templates
from kmtui.core.token.session import Hsm
from kmtui.service import Executed, Workstation
from tests.conftest import Clock, Team

S = KeyState


class Move(StrEnum):
    """What custodians ask for; a revoke splits by whether its reason reports a compromise."""

    ACTIVATE = "activate"
    ROTATE = "rotate"
    SUSPEND = "suspend"
    RESUME = "resume"
    DEACTIVATE = "deactivate"
    REVOKE = "revoke"  # superseded, cessation of operation, ...: no compromise reported
    REVOKE_COMPROMISE = "revoke-compromise"  # key compromise or CA compromise
    SCHEDULE_DESTROY = "schedule-destroy"
    CANCEL_DESTROY = "cancel-destroy"
    DESTROY = "destroy"  # once the waiting period has passed
    DESTROY_EARLY = "destroy-early"  # before it has passed: never legal
    CHECK = "check"  # a self-check: a use of the key, which leaves its state as it is


# RFC 5280 reason codes: the first two report a compromise, the others do not.
COMPROMISE_REASONS = ("key-compromise", "ca-compromise")
OTHER_REASONS = (
    "affiliation-changed",
    "superseded",
    "cessation-of-operation",
    "privilege-withdrawn",
)

REASONS = COMPROMISE_REASONS + OTHER_REASONS
REASON_FOR = {Move.REVOKE: "superseded", Move.REVOKE_COMPROMISE: "key-compromise"}  # by default

SCHEDULED_FROM = None  # the target of cancel-destroy: back to the state the key was scheduled from

# THE MODEL: (state, move) -> next state. Transitions numbered as in SP 800-57 Part 1 Rev. 5,
# section 7; "kmtui:" marks where kmtui deliberately differs, as its README and lifecycle module
# say. Written out by hand: nothing here is read from kmtui.core.control.lifecycle.
# Transition 1 (a new key enters pre-activation) is no move here: kmtui creates a key active
# (transitions 1 and 4 in one approved step), or quarantined when the token made it other than
# its template asked. No kmtui command makes a pre-activation key: the machine registers one.
MODEL: dict[tuple[KeyState, Move], KeyState | None] = {
    # 7.1 pre-activation
    (S.PRE_ACTIVATION, Move.ACTIVATE): S.ACTIVE,  # 4
    (S.PRE_ACTIVATION, Move.REVOKE_COMPROMISE): S.COMPROMISED,  # 3
    # kmtui: not in SP 800-57, where a pre-activation key goes only to active, compromised or
    # destroyed; kmtui revokes it for another reason as it revokes a live key: deactivated.
    (S.PRE_ACTIVATION, Move.REVOKE): S.DEACTIVATED,
    (S.PRE_ACTIVATION, Move.SCHEDULE_DESTROY): S.DESTROY_SCHEDULED,  # 2, through the wait
    # 7.2 active
    # kmtui: rotating puts new key material under the same key: the new version is active and
    # the previous version deactivated (transition 8 for that version, the default policy).
    (S.ACTIVE, Move.ROTATE): S.ACTIVE,
    (S.ACTIVE, Move.SUSPEND): S.SUSPENDED,  # 7
    (S.ACTIVE, Move.DEACTIVATE): S.DEACTIVATED,  # 8
    (S.ACTIVE, Move.REVOKE): S.DEACTIVATED,  # 8, with the reason recorded
    (S.ACTIVE, Move.REVOKE_COMPROMISE): S.COMPROMISED,  # 6
    (S.ACTIVE, Move.SCHEDULE_DESTROY): S.DESTROY_SCHEDULED,  # 5, through the wait
    # 7.3 suspended
    (S.SUSPENDED, Move.RESUME): S.ACTIVE,  # 10
    (S.SUSPENDED, Move.DEACTIVATE): S.DEACTIVATED,  # 12
    (S.SUSPENDED, Move.REVOKE): S.DEACTIVATED,  # 12, with the reason recorded
    (S.SUSPENDED, Move.REVOKE_COMPROMISE): S.COMPROMISED,  # 11
    (S.SUSPENDED, Move.SCHEDULE_DESTROY): S.DESTROY_SCHEDULED,  # 9, through the wait
    # 7.4 deactivated: never active or suspended again
    (S.DEACTIVATED, Move.REVOKE_COMPROMISE): S.COMPROMISED,  # 13
    # kmtui: revoking a deactivated key for another reason records the reason; it stays.
    (S.DEACTIVATED, Move.REVOKE): S.DEACTIVATED,
    (S.DEACTIVATED, Move.SCHEDULE_DESTROY): S.DESTROY_SCHEDULED,  # 14, through the wait
    # 7.5 compromised
    # kmtui: a compromised key may be revoked again, to record a CA compromise after a key
    # compromise; whatever the reason it stays compromised (its compromise date never later).
    (S.COMPROMISED, Move.REVOKE_COMPROMISE): S.COMPROMISED,
    (S.COMPROMISED, Move.REVOKE): S.COMPROMISED,
    (S.COMPROMISED, Move.SCHEDULE_DESTROY): S.DESTROY_SCHEDULED,  # 15, through the wait
    # kmtui: quarantined, a key the token made other than asked: never used, only destroyed.
    (S.QUARANTINED, Move.SCHEDULE_DESTROY): S.DESTROY_SCHEDULED,
    # kmtui: destruction waits (the policy's destroy_wait_days, at least a day) so that a mistaken
    # schedule can be cancelled, which returns the key to the state it was scheduled from.
    (S.DESTROY_SCHEDULED, Move.CANCEL_DESTROY): SCHEDULED_FROM,
    # Destroying after the wait completes transitions 2, 5, 9, 14 and 15 (7.6 destroyed: final).
    # kmtui: a key scheduled while compromised ends destroyed-compromised, the state of earlier
    # revisions; Rev. 5 has one destroyed state and keeps the compromise in the key's metadata.
    (S.DESTROY_SCHEDULED, Move.DESTROY): S.DESTROYED,
}

# A self-check uses the key, so it is allowed wherever its material exists and may be used.
CHECKABLE = frozenset(
    {
        S.PRE_ACTIVATION,  # 7.1: key confirmation only
        S.ACTIVE,  # 7.2
        S.SUSPENDED,  # 7.3: processing only
        S.DEACTIVATED,  # 7.4: processing only
        S.COMPROMISED,  # 7.5: processing under controlled conditions
        S.DESTROY_SCHEDULED,  # kmtui: the material stays on the token until destroyed
        S.QUARANTINED,  # kmtui: allowed, and fails: no check value was registered for it
    }
)

KINDS = {
    Move.ACTIVATE: OpKind.KEY_ACTIVATE,
    Move.ROTATE: OpKind.KEY_ROTATE,
    Move.SUSPEND: OpKind.KEY_SUSPEND,
    Move.RESUME: OpKind.KEY_RESUME,
    Move.DEACTIVATE: OpKind.KEY_DEACTIVATE,
    Move.REVOKE: OpKind.KEY_REVOKE,
    Move.REVOKE_COMPROMISE: OpKind.KEY_REVOKE,
    Move.SCHEDULE_DESTROY: OpKind.KEY_SCHEDULE_DESTROY,
    Move.CANCEL_DESTROY: OpKind.KEY_CANCEL_DESTROY,
    Move.DESTROY: OpKind.KEY_DESTROY,
    Move.DESTROY_EARLY: OpKind.KEY_DESTROY,
    Move.CHECK: OpKind.KEY_SELFCHECK,
}

Edge = tuple[str, Move, KeyState]  # (where from, move, where to), as the coverage counts them
Node = tuple[KeyState, KeyState | None]  # a state, and for a scheduled key where it came from


def resolve(state: KeyState, scheduled_from: KeyState | None, move: Move) -> KeyState | None:
    """Where the model takes a key on `move`; None when the move is illegal."""
    if move == Move.CHECK:
        return state if state in CHECKABLE else None
    if (state, move) not in MODEL:
        return None
    to = MODEL[state, move]
    if to is SCHEDULED_FROM:
        return scheduled_from
    if move == Move.DESTROY and scheduled_from == S.COMPROMISED:
        return S.DESTROYED_COMPROMISED
    return to


def origin(state: KeyState, scheduled_from: KeyState | None, move: Move) -> str:
    """A state as coverage counts it: cancel and destroy once for each state scheduled from."""
    if state == S.DESTROY_SCHEDULED and move in (Move.CANCEL_DESTROY, Move.DESTROY):
        return f"{state} (from {scheduled_from})"
    return str(state)


def moves_from(node: Node) -> Iterator[tuple[Move, Node, Edge]]:
    state, scheduled_from = node
    for move in Move:
        to = resolve(state, scheduled_from, move)
        if to is None:
            continue
        if move == Move.SCHEDULE_DESTROY:
            after: Node = (to, state)
        else:  # a self-check leaves a scheduled key scheduled from where it was
            after = (to, scheduled_from if to == S.DESTROY_SCHEDULED else None)
        yield move, after, (origin(state, scheduled_from, move), move, to)


STARTS = (S.ACTIVE, S.PRE_ACTIVATION, S.QUARANTINED)  # where the machine's keys begin


def every_edge() -> frozenset[Edge]:
    """Every transition of the model, from every state a key can be in."""
    seen: set[Node] = {(s, None) for s in STARTS}
    todo = list(seen)
    edges: set[Edge] = set()
    while todo:
        for _, after, edge in moves_from(todo.pop()):
            edges.add(edge)
            if after not in seen:
                seen.add(after)
                todo.append(after)
    return frozenset(edges)


EDGES = every_edge()

GONE = (S.DESTROYED, S.DESTROYED_COMPROMISED)
SLOW_RSA = ("RSA-3072", "RSA-4096")  # seconds per key on SoftHSM; RSA-2048 covers the RSA path
CHOICES = sorted(
    (algorithm, purpose)
    for purpose, names in policy.Rules().algorithms.items()
    for algorithm in names
    if algorithm not in SLOW_RSA
)
# Taken modulo the choices: over a wide range Hypothesis's picks spread evenly (over a narrow
# one they cluster at 0, its shrink target, and the same few moves come up again and again).
PICKS = st.integers(min_value=0, max_value=2**16)
MAX_KEYS = 3  # few keys, so that random steps reach the deep states (scheduled, destroyed)
LONG_AGO = "2000-01-01T00:00:00.000000Z"

# The session's token, handed over by the test function (a state machine cannot take fixtures).
_TOKEN: dict[str, Any] = {}
# How often each run of this session took each transition (the random one summed over examples).
TAKEN: dict[str, Counter[Edge]] = {"walk": Counter(), "random": Counter()}
COVERAGE = "lifecycle transitions of the SP 800-57 model, taken by"


@dataclass
class Expected:
    """What the model says one key is: its state and each version's state, in version order."""

    algorithm: str
    purpose: str
    state: KeyState
    versions: list[KeyState]
    scheduled_from: KeyState | None = None
    compromised_at: str = ""
    calls: list[str] = field(default_factory=list)


@contextmanager
def read_back_wrong(hsm: Hsm) -> Iterator[None]:
    """The token reports every new object as not SENSITIVE: kmtui must quarantine the key."""
    real = hsm.objects.read_attributes

    def tampered(obj: Any, attrs: list[Attribute]) -> dict[Attribute, Any]:
        values = real(obj, attrs)
        values[Attribute.SENSITIVE] = False
        return values

    with mock.patch.object(hsm.objects, "read_attributes", tampered):
        yield


class LifecycleMachine(RuleBasedStateMachine):
    """Drives every lifecycle move through `Workstation.run`; the model decides what is legal."""

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
        self.taken: Counter[Edge] = Counter()
        self.aims: dict[str, Edge] = {}

    def teardown(self) -> None:
        TAKEN["random"].update(self.taken)
        self.store.close()

    # -- keys -----------------------------------------------------------------------------------

    def new_key(self, algorithm: str, purpose: str, start: KeyState) -> str:
        """A key that begins in `start`: made by the gate, quarantined, or registered unused."""
        label = f"sm-{len(self.model)}-{algorithm}-{purpose}"
        prepared = self.ws.prepare_create(label=label, algorithm=algorithm, purpose=purpose)
        key_id = prepared.operation.key_id
        if start == S.QUARANTINED:
            with read_back_wrong(self.ws.hsm), pytest.raises(errors.TemplateMismatch):
                self.ws.run(prepared, self.team.codes("alice", "bob"))
            outcome = self.ws.audit.events(key_id=key_id, action=str(OpKind.KEY_CREATE), limit=1)
            assert outcome[0].outcome == "failure" and outcome[0].params["quarantined"]
        else:
            self.ws.run(prepared, self.team.codes("alice", "bob"))
        key = self.ws.get_key(key_id)
        first = S.QUARANTINED if start == S.QUARANTINED else S.ACTIVE
        assert key.state == first and [(v.version, v.state) for v in key.versions] == [(1, first)]
        if start == S.PRE_ACTIVATION:
            # Its row only, through the store: kmtui changes no version state on activation.
            self.sealed_update(replace(key, state=start, activated_at="", versions=[]))
        self.model[key_id] = Expected(algorithm, purpose, start, [first])
        return key_id

    def node(self, key_id: str) -> Node:
        m = self.model[key_id]
        return m.state, m.scheduled_from

    # -- driving the gate -------------------------------------------------------------------------

    def step(self, key_id: str, move: Move, reason: str = "") -> Executed | None:
        """Ask the gate for `move`; it must be refused exactly when the model has no transition."""
        m = self.model[key_id]
        kind = KINDS[move]
        to = resolve(m.state, m.scheduled_from, move)
        edge = (origin(m.state, m.scheduled_from, move), move, to)
        m.calls.append(str(move))
        history = " -> ".join(m.calls)
        if move == Move.DESTROY and m.state == S.DESTROY_SCHEDULED:
            self.end_wait(key_id)
        reason = reason or REASON_FOR.get(move, "")
        params = {"reason": reason} if reason else {}
        # The one legal move that fails: a check of a quarantined version, which has no check
        # value registered to compare with (quarantined, or scheduled for destruction from it).
        fails = move == Move.CHECK and m.versions[-1] == S.QUARANTINED
        before = self.ws.get_key(key_id)
        last_seq = self.ws.audit.events(limit=1)[0].seq
        failed = False
        try:
            prepared = self.ws.prepare(kind, key_id, **params)
            codes = self.team.codes("alice", "bob") if prepared.quorum else []
            result = self.ws.run(prepared, codes)
        except errors.PolicyRefused as exc:
            assert to is None, f"{kind} from {m.state} was refused: {exc.message} ({history})"
            after = self.ws.get_key(key_id)
            assert (after.state, after.versions) == (before.state, before.versions)
            written = self.ws.audit.events(after_seq=last_seq, newest_first=False)
            assert all(e.outcome == "refused" for e in written)  # no intent, nothing done
            return None
        except errors.HsmError as exc:
            assert to is not None and fails, f"{kind} from {m.state}: {exc.message} ({history})"
            failed, result = True, None
        assert to is not None, f"{kind} from {m.state} should have been refused ({history})"
        assert failed == fails, f"{kind} from {m.state} should have failed ({history})"
        outcome, intent = self.ws.audit.events(key_id=key_id, action=str(kind), limit=2)
        assert (intent.outcome, outcome.outcome) == ("intent", "failure" if failed else "success")
        assert outcome.params["intent"] == intent.seq
        if result is not None:
            assert result.intent == intent.seq and result.audit_seq == outcome.seq
        self.taken[(edge[0], edge[1], to)] += 1
        self.expect(key_id, move, to, result)
        return result

    def expect(self, key_id: str, move: Move, to: KeyState, result: Executed | None) -> None:
        """The model's own account of what a legal move did to the key and its versions."""
        m = self.model[key_id]
        if move == Move.ROTATE:
            m.versions[-1] = S.DEACTIVATED  # the default policy retires the previous version
            m.versions.append(S.ACTIVE)
            assert result is not None and result.facts["version"] == len(m.versions)
        elif move in (Move.DEACTIVATE, Move.REVOKE, Move.REVOKE_COMPROMISE):
            m.versions[-1] = to
        elif move == Move.SCHEDULE_DESTROY:
            m.scheduled_from = m.state
        elif move == Move.CANCEL_DESTROY:
            m.scheduled_from = None
        elif move == Move.DESTROY:
            live = sum(v not in GONE for v in m.versions)
            per_version = 1 if templates.ALGORITHMS[m.algorithm].symmetric else 2
            assert result is not None
            assert result.facts["objects_destroyed"] == live * per_version
            m.versions = [to] * len(m.versions)
            m.scheduled_from = None
        elif move == Move.CHECK and result is not None:
            verdicts = {
                k: v for k, v in result.facts["checks"].items() if k not in ("kcv", "fingerprint")
            }
            assert "registry-match" in verdicts and set(verdicts.values()) == {"pass"}
        if to == S.COMPROMISED and not m.compromised_at:  # dated once, by the first report
            m.compromised_at = self.ws.get_key(key_id).compromised_at
        m.state = to

    def end_wait(self, key_id: str) -> None:
        """The destruction waiting period is over: its end moved into the past."""
        key = self.ws.get_key(key_id)
        self.sealed_update(replace(key, destroy_after=LONG_AGO, versions=[]))

    def sealed_update(self, key: Key) -> None:
        """A registry write no kmtui command makes, sealed as an authorised change would be."""
        write = lambda: self.store.keys.update(key)  # noqa: E731
        self.ws.seals.write(write, "test.edit", f"key:{key.id}", actor="test")

    # -- rules ----------------------------------------------------------------------------------

    @initialize(target=keys, choice=st.sampled_from(CHOICES), start=st.sampled_from(STARTS))
    def first_key(self, choice: tuple[str, str], start: KeyState) -> str:
        return self.new_key(*choice, start)

    @precondition(lambda self: len(self.model) < MAX_KEYS)
    @rule(target=keys, choice=st.sampled_from(CHOICES), start=st.sampled_from(STARTS))
    def create(self, choice: tuple[str, str], start: KeyState) -> str:
        return self.new_key(*choice, start)

    @rule(key_id=keys, move=st.sampled_from(Move), reason=st.sampled_from(REASONS))
    def any_move(self, key_id: str, move: Move, reason: str) -> None:
        """Any move at all: the gate refuses it exactly when the model has no transition."""
        if move in (Move.REVOKE, Move.REVOKE_COMPROMISE):
            move = Move.REVOKE_COMPROMISE if reason in COMPROMISE_REASONS else Move.REVOKE
        self.step(key_id, move, reason if move in REASON_FOR else "")

    @rule(key_id=keys, pick=PICKS)
    def legal_move(self, key_id: str, pick: int) -> None:
        """One of the moves the model allows now: random moves alone seldom go deep."""
        legal = [move for move, _, _ in moves_from(self.node(key_id))]
        if not legal:
            return
        move = legal[pick % len(legal)]
        reasons = COMPROMISE_REASONS if move == Move.REVOKE_COMPROMISE else OTHER_REASONS
        reason = reasons[pick % len(reasons)]
        self.step(key_id, move, reason if move in REASON_FOR else "")

    @rule(key_id=keys, pick=PICKS)
    def toward_a_new_transition(self, key_id: str, pick: int) -> None:
        """A step on the shortest way to a transition this run has not taken yet (picked once)."""
        node = self.node(key_id)
        aim = self.aims.get(key_id)
        if aim is None or aim in self.taken or route(node, {aim}) is None:
            reachable = [e for e in sorted(EDGES - set(self.taken)) if route(node, {e})]
            if not reachable:
                return
            aim = self.aims[key_id] = reachable[pick % len(reachable)]
        found = route(node, {aim})
        assert found is not None
        self.step(key_id, found[0][0])

    # -- after every step ----------------------------------------------------------------------

    @invariant()
    def registry_matches_model_and_token(self) -> None:
        hsm = self.ws.hsm
        for key_id, m in self.model.items():
            key = self.ws.get_key(key_id)
            history = f"{key_id}: " + " -> ".join(m.calls)
            assert key.state == m.state, f"registry {key.state}, model {m.state} after {history}"
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
                if version.state == S.QUARANTINED:  # never trusted, so no check value kept
                    assert not (version.kcv or version.fingerprint), history
                elif symmetric:
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

    def check_invariants_now(self) -> None:
        self.registry_matches_model_and_token()
        self.reconcile_finds_nothing_and_every_intent_has_an_outcome()
        self.audit_chain_verifies()

    def _mine(self, finding: findings.Finding) -> bool:
        if finding.key_id in self.model:
            return True
        parsed = templates.parse_cka_id(bytes.fromhex(finding.cka_id)) if finding.cka_id else None
        return parsed is not None and parsed[0] in self.model


# -- the deterministic walk: every transition of the model, every refusal in every state --------


def route(node: Node, wanted: set[Edge]) -> tuple[list[Move], Edge] | None:
    """The fewest moves from `node` that end by taking a transition in `wanted` (breadth first)."""
    queue: deque[tuple[Node, list[Move]]] = deque([(node, [])])
    seen = {node}
    while queue:
        here, path = queue.popleft()
        for move, after, edge in moves_from(here):
            if edge in wanted:
                return [*path, move], edge
            if after not in seen:
                seen.add(after)
                queue.append((after, [*path, move]))
    return None


def walk(machine: LifecycleMachine) -> None:
    """Take every transition of the model at least once, and try each illegal move once per state.

    Keys begin wherever the next untaken transition can be reached from; each follows the
    shortest route to one untaken transition after another until none is left within its reach.
    """
    wanted = set(EDGES)
    probed: set[KeyState] = set()
    choices = itertools.cycle(CHOICES)

    def probe(key_id: str) -> None:
        state, scheduled_from = machine.node(key_id)
        if state in probed:
            return
        probed.add(state)
        for move in Move:
            if resolve(state, scheduled_from, move) is None:
                machine.step(key_id, move)

    while wanted:
        start = next((s for s in STARTS if route((s, None), wanted)), None)
        assert start is not None, f"no key can reach {sorted(wanted)}"
        key_id = machine.new_key(*next(choices), start)
        machine.check_invariants_now()
        while found := route(machine.node(key_id), wanted):
            path, aim = found
            for move in path:
                probe(key_id)
                machine.step(key_id, move)
                machine.check_invariants_now()
            assert aim in machine.taken, f"the walk took {path} for {aim} and missed it"
            wanted -= set(machine.taken)
        probe(key_id)


def coverage(columns: dict[str, Counter[Edge]]) -> list[str]:
    """One line per transition of the model, with how often each run took it."""
    names = list(columns)
    lines = [f"{'transition':72} " + " ".join(f"{n:>7}" for n in names)]
    for edge in sorted(EDGES):
        text = f"{edge[0]} --{edge[1]}--> {edge[2]}"
        lines.append(f"{text:72} " + " ".join(f"{columns[n][edge]:>7}" for n in names))
    missed = {n: sum(columns[n][e] == 0 for e in EDGES) for n in names}
    lines.append(f"{len(EDGES)} transitions; not taken: {missed}")
    return lines


@pytest.fixture
def token_for_machines(hsm: Hsm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    _TOKEN.update(hsm=hsm, base=tmp_path_factory.mktemp("stateful"))
    yield
    _TOKEN.clear()


@pytest.fixture
def machine(token_for_machines: None) -> Iterator[LifecycleMachine]:
    walker = LifecycleMachine()
    yield walker
    walker.store.close()


def test_a_walk_takes_every_transition_of_the_model_and_is_refused_every_other_move(
    machine: LifecycleMachine, summary: Callable[[str, list[str]], None]
) -> None:
    walk(machine)
    TAKEN["walk"] = machine.taken
    summary(COVERAGE, coverage(TAKEN))
    assert set(machine.taken) == EDGES
    assert all(count > 0 for count in machine.taken.values())


# Planted in kmtui's own table: an entry added (or, with None, removed) that SP 800-57 forbids.
MUTANTS = [
    pytest.param(
        (S.DEACTIVATED, OpKind.KEY_SUSPEND),
        S.SUSPENDED,
        "key.suspend from deactivated should have been refused",
        id="a-deactivated-key-may-be-suspended",
    ),
    pytest.param(
        (S.SUSPENDED, OpKind.KEY_RESUME),
        None,
        "key.resume from suspended was refused",
        id="a-suspended-key-can-no-longer-be-resumed",
    ),
    pytest.param(
        (S.SUSPENDED, OpKind.KEY_DEACTIVATE),
        S.ACTIVE,
        "registry active, model deactivated",
        id="deactivating-a-suspended-key-makes-it-active",
    ),
]


@pytest.mark.parametrize(("entry", "planted", "reported"), MUTANTS)
def test_the_walk_reports_a_mutant_planted_in_kmtui_s_transition_table(
    machine: LifecycleMachine,
    monkeypatch: pytest.MonkeyPatch,
    entry: tuple[KeyState, OpKind],
    planted: KeyState | None,
    reported: str,
) -> None:
    if planted is None:
        monkeypatch.delitem(lifecycle.TRANSITIONS, entry)
    else:
        monkeypatch.setitem(lifecycle.TRANSITIONS, entry, planted)
    with pytest.raises(AssertionError, match=reported):
        walk(machine)


@pytest.mark.slow
def test_random_lifecycle_sequences_keep_registry_token_and_audit_in_agreement(
    token_for_machines: None, summary: Callable[[str, list[str]], None]
) -> None:
    TAKEN["random"].clear()
    run_state_machine_as_test(
        LifecycleMachine,
        settings=settings(
            max_examples=25,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
    summary(COVERAGE, coverage(TAKEN))
    assert TAKEN["random"], "the random runs took no transition at all"


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
