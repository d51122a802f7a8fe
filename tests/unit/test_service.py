"""The gate: intent before the token is touched, outcome after, quarantine on a bad read-back."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from pkcs11 import Attribute

from kmtui.core import errors
from kmtui.core.hsm import Hsm
from kmtui.core.models import KeyState
from kmtui.core.service import Workstation
from kmtui.core.store import Store


def test_create_key_writes_intent_then_outcome_and_registers_the_version(
    workstation: Workstation,
) -> None:
    key = workstation.create_key(label="orders", algorithm="AES-256", actor="alice")
    events = workstation.audit.events(newest_first=False)
    intent, outcome = events[-2], events[-1]
    assert (intent.action, intent.outcome, intent.key_id) == ("key.create", "intent", key.id)
    assert (outcome.outcome, outcome.params["intent"]) == ("success", intent.seq)
    assert outcome.params["kcv"] == key.versions[0].kcv
    stored = workstation.store.get_key(key.id)
    assert stored is not None and stored.versions[0].cka_id == f"kmtui:{key.id}:1".encode()
    assert workstation.hsm.kcv(stored.versions[0].cka_id) == key.versions[0].kcv


def test_nothing_reaches_the_token_when_the_intent_cannot_be_recorded(
    hsm: Hsm, tmp_path: Path
) -> None:
    store = Store.open(tmp_path / "locked.db", busy_timeout_ms=50)
    ws = Workstation.assemble(hsm, store)
    before = len(hsm.objects())
    blocker = sqlite3.connect(tmp_path / "locked.db")
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(errors.AuditError):
            ws.create_key(label="never", algorithm="AES-256", actor="alice")
    finally:
        blocker.rollback()
        blocker.close()
    assert len(hsm.objects()) == before
    assert ws.store.count_keys() == 0
    store.close()


def test_a_token_failure_is_recorded_as_the_outcome(
    workstation: Workstation, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workstation.hsm, "_mechanisms", frozenset())
    with pytest.raises(errors.MechanismNotSupported):
        workstation.create_key(label="ec", algorithm="EC-P384", actor="bob")
    last = workstation.audit.events(newest_first=True, limit=1)[0]
    assert (last.action, last.outcome) == ("key.create", "failure")
    assert last.params["error"] == "MechanismNotSupported"
    assert workstation.store.count_keys() == 0


def test_a_key_that_reads_back_wrong_is_registered_as_quarantined(
    workstation: Workstation, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = workstation.hsm._read_attributes

    def tampered(obj: Any, attrs: list[Attribute]) -> dict[Attribute, Any]:
        values = real(obj, attrs)
        values[Attribute.SENSITIVE] = False
        return values

    monkeypatch.setattr(workstation.hsm, "_read_attributes", tampered)
    with pytest.raises(errors.TemplateMismatch):
        workstation.create_key(label="odd", algorithm="AES-128", actor="carol")
    (key,) = workstation.store.find_keys(label="odd")
    assert key.state == KeyState.QUARANTINED
    last = workstation.audit.events(newest_first=True, limit=1)[0]
    assert last.outcome == "failure" and last.params["quarantined"] is True


def test_keys_are_found_by_id_label_and_uri(workstation: Workstation) -> None:
    key = workstation.create_key(label="by-ref", algorithm="EC-P256", actor="alice")
    described = workstation.describe(key)
    uri = described["versions"][0]["pkcs11_uri"]
    assert workstation.get_key(key.id).id == key.id
    assert workstation.get_key("by-ref").id == key.id
    assert workstation.get_key(uri).id == key.id
    workstation.create_key(label="by-ref", algorithm="AES-128", actor="alice")
    with pytest.raises(errors.UsageError, match="2 keys are labelled"):
        workstation.get_key("by-ref")
