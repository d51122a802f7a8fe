"""The ceremony transcript: built from the trail, closed by a checkpoint signed on the token."""

from __future__ import annotations

import pytest

from kmtui.core import errors
from kmtui.core.audit import transcript
from kmtui.core.audit.anchors import signature_ok
from kmtui.core.control.operations import ApprovalInput, OpKind
from tests.conftest import Team


def test_transcript_names_who_was_present_what_was_done_and_the_signed_head(team: Team) -> None:
    ws = team.ws
    since = ws.audit.events(limit=1)[0].seq
    key = ws.create_key(
        label="ceremony-kek",
        algorithm="AES-256",
        purpose="wrap",
        approvals=team.codes("alice", "carol"),
    )
    prepared = ws.prepare(OpKind.KEY_ROTATE, key.id)
    alice, bob = team.codes("alice", "bob")
    with pytest.raises(errors.ApprovalRefused):
        ws.run(prepared, [alice, ApprovalInput("bob", f"{(int(bob.code) + 1) % 10**6:06d}")])
    document = transcript.build(ws.audit, ws.anchors, ws.hsm.name, since)
    text = document.to_text()
    assert document.present == ["alice", "carol"]  # bob's code was wrong: not counted present
    assert "ceremony-kek" in text and key.versions[0].kcv in text
    assert "approved by alice, carol" in text
    assert any("bob: wrong" in r for r in document.refusals)
    checkpoint = document.checkpoint
    assert checkpoint is not None and checkpoint.seq == document.last_seq
    assert checkpoint.signature in text and checkpoint.head_hash in text
    assert signature_ok(checkpoint, ws.anchors.public_key()[0])
    assert "witnesses" in text


def test_html_transcript_shows_hostile_labels_inertly(team: Team) -> None:
    ws = team.ws
    since = ws.audit.events(limit=1)[0].seq
    ws.create_key(label="plain", algorithm="AES-128", approvals=team.codes("alice", "bob"))
    intent = ws.audit.events(action="key.create", limit=2)[-1]
    hostile = "<script>alert(1)</script>\x1b]0;x\x07"
    event = type(intent)(**{**intent.__dict__, "params": {**intent.params, "label": hostile}})
    step = transcript._step(ws.audit.events(action="key.create", limit=1)[0], event)
    page = transcript.Transcript("t", since + 1, since + 2, "", "", steps=[step]).to_html()
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "\x1b" not in page and "\\x1b" in page
