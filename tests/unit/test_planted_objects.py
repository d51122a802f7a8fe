"""Token objects kmtui trusts are private and its own.

Any local user can open a public session on the token and create public objects without the PIN.
Each attack here plants them with pkcs11-tool in another process that never logs in, exactly as
that user would, and checks that kmtui neither believes them nor keeps quiet about them.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pkcs11 import Attribute, ObjectClass

from kmtui.core import errors
from kmtui.core.audit.anchors import signature_ok
from kmtui.core.control import totp
from kmtui.core.control.operations import OpKind
from kmtui.core.control.pin import PinHalves
from kmtui.core.keys import components
from kmtui.core.keys.findings import Finding, FindingKind
from kmtui.core.registry.db import Store
from kmtui.core.token.sealing import SEAL_KEY_ID
from kmtui.core.token.session import Hsm
from kmtui.core.token.signer import AUDIT_KEY_ID, HEAD_LABEL
from kmtui.service import Workstation
from tests.conftest import Clock, SoftHsm, Team
from tests.unit.test_distribution import export, exportable, trusted_kek
from tests.unit.test_distribution_rsa import OAEP_SHA1, import_public, pem_of

KNOWN = bytes(range(32))
"""The value of every secret key planted here: the attacker knows it."""


def attacker_public_der() -> bytes:
    """An EC P-256 public key whose private half the attacker holds."""
    return (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


class NoPin:
    """pkcs11-tool on one token as any local user runs it: no --login, so no PIN, public objects."""

    def __init__(self, token: SoftHsm, label: str, directory: Path) -> None:
        tool = shutil.which("pkcs11-tool")
        if tool is None:
            pytest.fail("pkcs11-tool not found: run `make test`, which installs opensc.")
        self._base = [tool, "--module", token.module, "--token-label", label]
        self._env = {**os.environ, "SOFTHSM2_CONF": str(token.conf)}
        self._dir = directory
        self.planted: list[dict[Attribute, Any]] = []

    def tool(self, *args: str) -> None:
        proc = subprocess.run(
            [*self._base, *args],
            env=self._env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr

    def _file(self, value: bytes) -> str:
        path = self._dir / f"plant-{len(self.planted)}.bin"
        path.write_bytes(value)
        return str(path)

    def secret(self, cka_id: bytes, value: bytes = KNOWN) -> None:
        self.tool(
            "--write-object",
            self._file(value),
            "--type",
            "secrkey",
            "--key-type",
            f"AES:{len(value)}",
            "--id",
            cka_id.hex(),
            "--label",
            "planted",
        )
        self.planted.append(
            {
                Attribute.CLASS: ObjectClass.SECRET_KEY,
                Attribute.ID: cka_id,
                Attribute.LABEL: "planted",
            }
        )

    def public_key(self, cka_id: bytes, der: bytes) -> None:
        self.tool(
            "--write-object",
            self._file(der),
            "--type",
            "pubkey",
            "--id",
            cka_id.hex(),
            "--label",
            "planted",
        )
        self.planted.append(
            {
                Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                Attribute.ID: cka_id,
                Attribute.LABEL: "planted",
            }
        )

    def data(self, label: str, value: bytes) -> None:
        self.tool("--write-object", self._file(value), "--type", "data", "--label", label)
        self.planted.append({Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: label})


@pytest.fixture
def no_pin(softhsm_token: SoftHsm, hsm: Hsm, tmp_path: Path) -> Iterator[NoPin]:
    """Plants on the suite's shared token; removes what it planted afterwards (by label: the
    public halves of kmtui's own key pairs are public objects too)."""
    planter = NoPin(softhsm_token, softhsm_token.label, tmp_path)
    yield planter
    if not hsm.logged_in:
        hsm.login(softhsm_token.pin)

    def remove(session: Any) -> None:
        for query in planter.planted:
            for obj in list(session.get_objects({**query, Attribute.PRIVATE: False})):
                obj.destroy()

    hsm.call(remove)


def fresh_session(ws: Workstation, halves: PinHalves) -> None:
    """Log out and in again: nothing the earlier session found is remembered."""
    ws.hsm.logout()
    ws.login(halves)


def found(findings: list[Finding], kind: FindingKind, cka_id: bytes) -> list[Finding]:
    return [f for f in findings if f.kind == kind and f.cka_id == cka_id.hex()]


def test_a_public_head_planted_without_the_pin_neither_refuses_log_in_nor_goes_unreported(
    team: Team, softhsm_token: SoftHsm, no_pin: NoPin
) -> None:
    ws = team.ws
    ws.anchors.sync()
    registry = ws.anchors.registry_id()
    label = f"{HEAD_LABEL}:{registry}"
    forged = {"registry": registry, "seq": 999999, "hash": "0" * 64}
    no_pin.data(label, json.dumps(forged).encode())
    fresh_session(ws, softhsm_token.halves)  # was: AUDIT TRAIL ROLLED BACK, every log-in refused
    assert ws.anchors.check_head() == ""
    report = ws.reconciler.run()
    planted = [f for f in report.findings if f.kind == FindingKind.IMPOSTOR and f.label == label]
    assert len(planted) == 1 and "public" in planted[0].detail


def test_public_objects_under_kmtui_system_ids_are_reported_and_never_used(
    team: Team, softhsm_token: SoftHsm, no_pin: NoPin
) -> None:
    ws = team.ws
    pem, _ = ws.anchors.public_key()
    no_pin.secret(SEAL_KEY_ID)
    no_pin.secret(AUDIT_KEY_ID)
    no_pin.public_key(AUDIT_KEY_ID, attacker_public_der())
    fresh_session(ws, softhsm_token.halves)
    sealed = ws.hsm.sealing.seal(b"a seed", b"aad")
    with pytest.raises(InvalidTag):
        AESGCM(KNOWN).decrypt(sealed[:12], sealed[12:], b"aad")
    assert ws.hsm.sealing.unseal(sealed, b"aad") == b"a seed"
    assert ws.anchors.public_key()[0] == pem
    checkpoint = ws.anchors.checkpoint("after the plant")
    assert checkpoint is not None and signature_ok(checkpoint, pem)
    report = ws.reconciler.run()
    assert len(found(report.findings, FindingKind.IMPOSTOR, SEAL_KEY_ID)) == 1
    audit = found(report.findings, FindingKind.IMPOSTOR, AUDIT_KEY_ID)
    assert len(audit) == 2
    assert {"SECRET_KEY", "PUBLIC_KEY"} == {
        c for f in audit for c in f.detail.split() if "_KEY" in c
    }


def test_public_objects_under_a_registered_keys_id_are_reported_and_never_used(
    team: Team, softhsm_token: SoftHsm, no_pin: NoPin
) -> None:
    ws = team.ws
    aes = ws.create_key(
        label="orders-dek", algorithm="AES-256", approvals=team.codes("alice", "bob")
    )
    pair = ws.create_key(
        label="orders-signer",
        algorithm="EC-P256",
        purpose="sign",
        policy_name="signing",
        approvals=team.codes("alice", "bob"),
    )
    secret_id, pair_id = aes.versions[0].cka_id, pair.versions[0].cka_id
    no_pin.secret(secret_id)  # a public twin whose value the attacker knows
    no_pin.public_key(secret_id, attacker_public_der())  # a class the key does not have
    no_pin.public_key(pair_id, attacker_public_der())  # a second public half
    fresh_session(ws, softhsm_token.halves)
    assert ws.hsm.objects.kcv(secret_id) == aes.versions[0].kcv
    checks = ws.run(ws.prepare(OpKind.KEY_SELFCHECK, aes.id), []).facts["checks"]
    assert checks["encrypt-decrypt"] == checks["registry-match"] == "pass"
    with pytest.raises(errors.DuplicateObject, match="2 public keys"):
        ws.hsm.objects.fingerprint(pair_id)
    report = ws.reconciler.run()
    mine = [f for f in report.findings if f.key_id in (aes.id, pair.id)]
    assert {(f.kind, f.key_id) for f in mine} == {
        (FindingKind.IMPOSTOR, aes.id),
        (FindingKind.DUPLICATE, pair.id),
    }
    assert len(found(mine, FindingKind.IMPOSTOR, secret_id)) == 2


def test_untrusted_twins_of_trusted_wrapping_keys_are_reported_and_never_used(
    team: Team, softhsm_token: SoftHsm, no_pin: NoPin, tmp_path: Path
) -> None:
    ws = team.ws
    partner = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    recipient = import_public(
        team,
        pem_of(partner.public_key(), tmp_path / "partner.pem"),
        "partner",
        trusted=True,
        so_login=softhsm_token.so_halves,
    )
    kek = trusted_kek(team, softhsm_token.so_halves)
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = attacker.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    no_pin.public_key(recipient.versions[0].cka_id, der)
    no_pin.secret(kek.versions[0].cka_id)
    fresh_session(ws, softhsm_token.halves)
    key = exportable(team)
    prepared = ws.distribution.prepare_export(key.id, recipient.id)
    ws.distribution.run_export(prepared, team.codes("alice", "carol"), tmp_path / "k.json")
    blob = base64.b64decode(json.loads((tmp_path / "k.json").read_text())["wrapped"])
    assert components.kcv_of(partner.decrypt(blob, OAEP_SHA1)) == key.versions[0].kcv
    export(team, key, kek, tmp_path / "kek.json")
    report = ws.reconciler.run()
    assert (
        "security officer"
        in found(report.findings, FindingKind.IMPOSTOR, recipient.versions[0].cka_id)[0].detail
    )
    assert found(report.findings, FindingKind.IMPOSTOR, kek.versions[0].cka_id)


@pytest.fixture
def pristine(softhsm_token: SoftHsm, tmp_path: Path) -> Iterator[Hsm]:
    """The token no kmtui process has used: no sealing key, no audit key, no head yet."""
    token = Hsm(
        softhsm_token.module,
        token_label=softhsm_token.pristine_label,
        softhsm2_conf=str(softhsm_token.conf),
    )
    yield token
    token.close()


def test_system_objects_planted_on_a_new_token_before_first_use_are_never_used(
    pristine: Hsm, softhsm_token: SoftHsm, tmp_path: Path, clock: Clock
) -> None:
    attacker = NoPin(softhsm_token, softhsm_token.pristine_label, tmp_path)
    attacker.secret(SEAL_KEY_ID)
    attacker.public_key(AUDIT_KEY_ID, attacker_public_der())
    pristine.login(softhsm_token.pin)
    store = Store.open(tmp_path / "kmtui.db")
    ws = Workstation.assemble(pristine, store, clock=clock)
    crew = Team(ws, clock, {})
    crew.enroll("alice", "custodian")
    crew.enroll("bob", "custodian")
    # Was: alice's seed sealed under the planted key, readable from the file with no PIN.
    blob = ws.operators.get("alice").sealed_seed
    with pytest.raises(InvalidTag):
        AESGCM(KNOWN).decrypt(blob[:12], blob[12:], totp.seal_aad("alice"))
    pem, _ = ws.anchors.public_key()
    checkpoint = ws.anchors.checkpoint("first")
    assert checkpoint is not None and signature_ok(checkpoint, pem)
    # Still without the PIN, the attacker deletes every public key under the audit key's id and
    # plants their own alone: kmtui keeps the public key that its private key proves.
    attacker.tool("--delete-object", "--type", "pubkey", "--id", AUDIT_KEY_ID.hex())
    attacker.tool("--delete-object", "--type", "pubkey", "--id", AUDIT_KEY_ID.hex())
    attacker.public_key(AUDIT_KEY_ID, attacker_public_der())
    pristine.logout()
    pristine.login(softhsm_token.pin)
    assert ws.anchors.public_key()[0] == pem
    report = ws.reconciler.run()
    assert found(report.findings, FindingKind.IMPOSTOR, SEAL_KEY_ID)
    assert found(report.findings, FindingKind.IMPOSTOR, AUDIT_KEY_ID)
    store.close()
