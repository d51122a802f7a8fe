"""Recipients' RSA public keys: import from PEM (trusted by the security officer, or not) and
export under RSA-OAEP (SHA-1: SoftHSM 2.6.1's only OAEP), proved by opening the blob here."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from pkcs11 import ObjectClass

from kmtui.core import errors
from kmtui.core.control.operations import OpKind
from kmtui.core.control.pin import PinHalves
from kmtui.core.keys import components, findings, keyfiles
from kmtui.core.models import Key
from tests.conftest import SoftHsm, Team
from tests.unit.test_distribution import exportable

OAEP_SHA1 = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)


def pem_of(public: rsa.RSAPublicKey | ec.EllipticCurvePublicKey, path: Path) -> Path:
    path.write_bytes(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


def import_public(
    team: Team, path: Path, label: str, *, trusted: bool = False, so_login: PinHalves | None = None
) -> Key:
    recipient = keyfiles.read_recipient_pem(path)
    prepared = team.ws.distribution.prepare_import_public(recipient, label=label, trusted=trusted)
    return team.ws.distribution.run_import_public(
        prepared, recipient, team.codes("alice", "bob"), so_login=so_login
    )


@pytest.fixture(scope="module")
def recipient_private() -> rsa.RSAPrivateKey:
    """The recipient's key pair, made here: kmtui only ever sees its public half."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def trusted_recipient(
    team: Team, softhsm_token: SoftHsm, recipient_private: rsa.RSAPrivateKey, tmp_path: Path
) -> Key:
    path = pem_of(recipient_private.public_key(), tmp_path / "partner.pem")
    return import_public(team, path, "partner-bank", trusted=True, so_login=softhsm_token.so_halves)


def test_a_trusted_recipient_is_imported_by_the_security_officer(
    team: Team, trusted_recipient: Key, recipient_private: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    version = trusted_recipient.versions[0]
    expected = keyfiles.read_recipient_pem(
        pem_of(recipient_private.public_key(), tmp_path / "p.pem")
    )
    assert version.fingerprint == expected.fingerprint and version.kcv == ""
    assert trusted_recipient.algorithm == "RSA-2048" and trusted_recipient.purpose == "wrap"
    assert trusted_recipient.tags == ["recipient", "trusted"]
    assert version.cka_id == f"kmtui:{trusted_recipient.id}:1".encode()
    attrs = team.ws.hsm.objects.attributes(version.cka_id, ObjectClass.PUBLIC_KEY)
    assert attrs["TRUSTED"] is True and attrs["WRAP"] is True and attrs["MODIFIABLE"] is False
    assert attrs["ENCRYPT"] is False and attrs["VERIFY"] is False and attrs["DERIVE"] is False
    assert attrs["PRIVATE"] is False and attrs["TOKEN"] is True
    assert team.ws.hsm.objects.find(version.cka_id, ObjectClass.PRIVATE_KEY) is None
    assert team.ws.hsm.objects.fingerprint(version.cka_id) == expected.fingerprint
    events = team.ws.audit.events(action="key.import", key_id=trusted_recipient.id, limit=5)
    assert {e.outcome for e in events} == {"intent", "success"}


def test_an_untrusted_recipient_is_imported_by_the_user_session(team: Team, tmp_path: Path) -> None:
    public = rsa.generate_private_key(public_exponent=65537, key_size=3072).public_key()
    key = import_public(team, pem_of(public, tmp_path / "r.pem"), "partner-untrusted")
    assert key.algorithm == "RSA-3072" and key.tags == ["recipient"]
    attrs = team.ws.hsm.objects.attributes(key.versions[0].cka_id, ObjectClass.PUBLIC_KEY)
    assert attrs["TRUSTED"] is False and attrs["WRAP"] is True
    with pytest.raises(errors.UsageError, match="already registered"):
        team.ws.distribution.prepare_import_public(
            keyfiles.read_recipient_pem(tmp_path / "r.pem"), label="again"
        )


def test_a_trusted_import_needs_the_so_halves_and_a_wrong_half_creates_nothing(
    team: Team, softhsm_token: SoftHsm, tmp_path: Path
) -> None:
    public = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    recipient = keyfiles.read_recipient_pem(pem_of(public, tmp_path / "r.pem"))
    before = team.ws.store.keys.count()
    prepared = team.ws.distribution.prepare_import_public(recipient, label="needs-so", trusted=True)
    with pytest.raises(errors.UsageError, match="security officer"):
        team.ws.distribution.run_import_public(prepared, recipient, team.codes("alice", "bob"))
    with pytest.raises(errors.HsmError):
        team.ws.distribution.run_import_public(
            prepared,
            recipient,
            team.codes("alice", "bob"),
            so_login=PinHalves.of([softhsm_token.so_pairs[0], ("bob", "wrong-second-half")]),
        )
    assert team.ws.store.keys.count() == before
    assert team.ws.hsm.objects.find(bytes.fromhex(prepared.operation.params["cka_id"])) is None


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("rsa-1024", "too short: RSA-1024"),
        ("ec-p256", "non-RSA public key"),
        ("garbage", "not a readable PEM public key"),
        ("truncated", "not a readable PEM public key"),
        ("private", "holds a PRIVATE key"),
    ],
)
def test_bad_recipient_keys_are_refused_and_nothing_is_registered(
    team: Team, tmp_path: Path, kind: str, message: str
) -> None:
    path = tmp_path / f"{kind}.pem"
    if kind == "rsa-1024":
        pem_of(rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key(), path)
    elif kind == "ec-p256":
        pem_of(ec.generate_private_key(ec.SECP256R1()).public_key(), path)
    elif kind == "garbage":
        path.write_text("-----BEGIN PUBLIC KEY-----\nnot base64 at all\n-----END PUBLIC KEY-----\n")
    elif kind == "truncated":
        whole = pem_of(rsa.generate_private_key(65537, 2048).public_key(), path).read_text()
        path.write_text(whole[: len(whole) // 2])
    else:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        path.write_bytes(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    before = team.ws.store.keys.count()
    with pytest.raises(errors.UsageError, match=message):
        team.ws.distribution.load_recipient(path)
    assert team.ws.store.keys.count() == before
    refused = team.ws.audit.events(action="key.import", limit=1, newest_first=True)[0]
    assert refused.outcome == "refused" and refused.params["recipient_pem"] == path.name
    assert message.split(":")[0] in refused.params["message"]


def test_export_to_a_trusted_recipient_really_holds_the_key(
    team: Team,
    trusted_recipient: Key,
    recipient_private: rsa.RSAPrivateKey,
    tmp_path: Path,
) -> None:
    key = exportable(team, "dek-for-partner")
    kcv = key.versions[0].kcv
    assert len(kcv) == 6
    prepared = team.ws.distribution.prepare_export(key.id, trusted_recipient.id)
    assert "RSA-OAEP" in prepared.summary
    result = team.ws.distribution.run_export(
        prepared, team.codes("alice", "carol"), tmp_path / "k.json"
    )
    document = json.loads((tmp_path / "k.json").read_text())
    manifest = document["manifest"]
    assert manifest["mechanism"] == "rsa-oaep-sha1"
    assert manifest["wrapping_key_fingerprint"] == trusted_recipient.versions[0].fingerprint
    assert "wrapping_key_kcv" not in manifest and manifest["kcv"] == kcv
    blob = base64.b64decode(document["wrapped"])
    assert len(blob) == 256 and result.facts["blob_sha256"]
    # What the recipient's HSM would do: OAEP-decrypt with the private key, then check the KCV.
    value = recipient_private.decrypt(blob, OAEP_SHA1)
    assert len(value) == 32 and components.kcv_of(value) == kcv
    assert key.id in {k for k, _ in team.ws.store.keys.dependents(trusted_recipient.id)}
    # Such a file is the recipient's to open, not this workstation's.
    with pytest.raises(errors.UsageError, match="meant for that recipient's private key"):
        keyfiles.read_wrapped(tmp_path / "k.json")


def test_an_untrusted_recipient_cannot_wrap_an_exportable_key(team: Team, tmp_path: Path) -> None:
    public = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    untrusted = import_public(team, pem_of(public, tmp_path / "u.pem"), "untrusted-partner")
    key = exportable(team, "dek-stays")
    with pytest.raises(errors.PolicyRefused, match="not a trusted recipient key"):
        team.ws.distribution.prepare_export(key.id, untrusted.id)
    # The token says the same when asked directly: WRAP_WITH_TRUSTED needs CKA_TRUSTED.
    with pytest.raises(errors.PolicyRefused, match="refused to wrap"):
        team.ws.hsm.wrapping.wrap(
            key.versions[0].cka_id,
            untrusted.versions[0].cka_id,
            *keyfiles.WRAP_MECHANISMS["rsa-oaep-sha1"],
        )
    assert not list((tmp_path).glob("*.json"))


def test_reconcile_is_clean_for_recipient_keys_and_sees_a_missing_one(
    team: Team, trusted_recipient: Key, tmp_path: Path
) -> None:
    public = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    import_public(team, pem_of(public, tmp_path / "u.pem"), "plain-partner")
    report = team.ws.reconciler.run()
    mine = [f for f in report.findings if f.key_id == trusted_recipient.id]
    assert mine == []
    assert report.matched >= 2
    prepared = team.ws.prepare(OpKind.KEY_SELFCHECK, trusted_recipient.id)
    checks = team.ws.run(prepared).facts["checks"]
    assert checks["registry-match"] == "pass" and checks["wrap-only"] == "pass"
    team.ws.hsm.objects.destroy(trusted_recipient.versions[0].cka_id)
    report = team.ws.reconciler.run()
    kinds = {f.kind for f in report.findings if f.key_id == trusted_recipient.id}
    assert kinds == {findings.FindingKind.MISSING}
