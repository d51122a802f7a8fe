"""Export under a trusted KEK, import with KCV checks, and keys held as XOR components."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from pkcs11 import ObjectClass

from kmtui.core import errors
from kmtui.core.control.operations import OpKind
from kmtui.core.control.pin import PinHalves
from kmtui.core.keys import components, keyfiles
from kmtui.core.models import Key
from tests.conftest import SoftHsm, Team


def trusted_kek(team: Team, so_login: PinHalves, label: str = "transport-kek") -> Key:
    prepared = team.ws.prepare_create(
        label=label, algorithm="AES-256", purpose="wrap", trusted=True
    )
    team.ws.run(prepared, team.codes("alice", "bob"), so_login=so_login)
    return team.ws.get_key(prepared.operation.key_id)


def exportable(team: Team, label: str = "app-dek") -> Key:
    return team.ws.create_key(
        label=label,
        algorithm="AES-256",
        policy_name="exportable-dek",
        exportable=True,
        approvals=team.codes("alice", "bob"),
    )


def export(team: Team, key: Key, kek: Key, out: Path) -> dict:
    prepared = team.ws.distribution.prepare_export(key.id, kek.id)
    return team.ws.distribution.run_export(prepared, team.codes("alice", "carol"), out)


def do_import(team: Team, path: Path, kek: Key, label: str, kcv: str = "") -> Key:
    wrapped = keyfiles.read_wrapped(path)
    prepared = team.ws.distribution.prepare_import(wrapped, kek.id, label=label, kcv=kcv)
    return team.ws.distribution.run_import(prepared, wrapped, team.codes("bob", "carol"))


@pytest.fixture
def kek(team: Team, softhsm_token: SoftHsm) -> Key:
    return trusted_kek(team, softhsm_token.so_halves)


def test_a_trusted_kek_is_made_by_the_security_officer(team: Team, kek: Key) -> None:
    attrs = team.ws.hsm.objects.attributes(kek.versions[0].cka_id, ObjectClass.SECRET_KEY)
    assert attrs["WRAP"] is True and attrs["ENCRYPT"] is False
    assert kek.tags == ["trusted"] and len(kek.versions[0].kcv) == 6
    with pytest.raises(errors.PolicyRefused, match="replaced, not rotated"):
        team.ws.prepare(OpKind.KEY_ROTATE, kek.id)


def test_a_wrong_so_half_creates_nothing_and_the_trail_names_the_so_custodians(
    team: Team, softhsm_token: SoftHsm
) -> None:
    before = team.ws.store.keys.count()
    prepared = team.ws.prepare_create(
        label="nope", algorithm="AES-256", purpose="wrap", trusted=True
    )
    (carol, first), (bob, _) = softhsm_token.so_pairs
    wrong = PinHalves.of([(carol, first), (bob, "not-the-second-half")])
    with pytest.raises(errors.HsmError):
        team.ws.run(prepared, team.codes("alice", "bob"), so_login=wrong)
    assert team.ws.store.keys.count() == before
    failed = team.ws.audit.events(limit=1, action="key.create")[0]
    assert failed.outcome == "failure" and failed.params["so_custodians"] == ["carol", "bob"]
    assert all(half not in repr(failed.params) for _, half in softhsm_token.so_pairs)
    assert team.ws.hsm.objects.find(bytes.fromhex(prepared.operation.params["cka_id"])) is None


def test_export_then_import_round_trips_with_the_same_kcv(
    team: Team, kek: Key, tmp_path: Path
) -> None:
    key = exportable(team)
    result = export(team, key, kek, tmp_path / "dek.json")
    document = json.loads((tmp_path / "dek.json").read_text())
    assert (tmp_path / "dek.json").stat().st_mode & 0o777 == 0o600
    manifest = document["manifest"]
    assert manifest["kcv"] == key.versions[0].kcv and manifest["wrapping_key_id"] == kek.id
    assert result.facts["blob_sha256"]
    imported = do_import(team, tmp_path / "dek.json", kek, "app-dek-copy")
    assert imported.versions[0].kcv == key.versions[0].kcv
    assert team.ws.hsm.objects.kcv(imported.versions[0].cka_id) == key.versions[0].kcv
    assert imported.tags == ["imported"] and not imported.exportable
    dependents = {k for k, _ in team.ws.store.keys.dependents(kek.id)}
    assert {key.id, imported.id} <= dependents  # revoking the KEK will name both


def test_a_non_exportable_key_is_refused_with_the_reason(team: Team, kek: Key) -> None:
    key = team.ws.create_key(
        label="stays", algorithm="AES-256", approvals=team.codes("alice", "bob")
    )
    with pytest.raises(errors.PolicyRefused, match="not exportable"):
        team.ws.distribution.prepare_export(key.id, kek.id)


def test_an_untrusted_kek_cannot_wrap_an_exportable_key(team: Team, tmp_path: Path) -> None:
    plain = team.ws.create_key(
        label="plain-kek", algorithm="AES-256", purpose="wrap", approvals=team.codes("alice", "bob")
    )
    key = exportable(team)
    with pytest.raises(errors.PolicyRefused, match="not a trusted"):
        team.ws.distribution.prepare_export(key.id, plain.id)


def _tamper(path: Path, how: str) -> None:
    document = json.loads(path.read_text())
    blob = bytearray(base64.b64decode(document["wrapped"]))
    if how == "flip":
        blob[len(blob) // 2] ^= 0x01
        document["wrapped"] = base64.b64encode(bytes(blob)).decode()
    elif how == "short":
        document["wrapped"] = base64.b64encode(bytes(blob[:-8])).decode()
    elif how == "kcv":
        document["manifest"]["kcv"] = "000000"
    path.write_text(json.dumps(document))


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("flip", "could not be unwrapped"),
        ("short", "could not be unwrapped|truncated"),
        ("kcv", "KCV mismatch"),
    ],
)
def test_tampered_files_are_refused_and_nothing_is_registered(
    team: Team, kek: Key, tmp_path: Path, how: str, message: str
) -> None:
    key = exportable(team)
    export(team, key, kek, tmp_path / "k.json")
    _tamper(tmp_path / "k.json", how)
    before = team.ws.store.keys.count()
    with pytest.raises(errors.KmtuiError, match=message):
        do_import(team, tmp_path / "k.json", kek, "tampered")
    assert team.ws.store.keys.count() == before
    if how != "short" or "truncated" not in message:
        last = team.ws.audit.events(action="key.import", limit=1)
        assert not last or last[0].outcome in ("failure", "refused")


def test_truncated_json_and_a_wrong_kek_are_refused(team: Team, kek: Key, tmp_path: Path) -> None:
    key = exportable(team)
    export(team, key, kek, tmp_path / "k.json")
    text = (tmp_path / "k.json").read_text()
    (tmp_path / "cut.json").write_text(text[: len(text) // 2])
    with pytest.raises(errors.UsageError, match="truncated or damaged JSON"):
        keyfiles.read_wrapped(tmp_path / "cut.json")
    other = team.ws.create_key(
        label="other-kek", algorithm="AES-256", purpose="wrap", approvals=team.codes("alice", "bob")
    )
    with pytest.raises(errors.PolicyRefused, match="could not be unwrapped"):
        do_import(team, tmp_path / "k.json", other, "wrong")
    with pytest.raises(errors.PolicyRefused, match="differs from the file"):
        do_import(team, tmp_path / "k.json", kek, "typed", kcv="ABCDEF")


def test_components_generate_a_key_no_custodian_holds_alone(team: Team) -> None:
    prepared = team.ws.components.prepare(
        label="zmk",
        algorithm="AES-256",
        purpose="wrap",
        custodians=["alice", "bob", "carol"],
    )
    key, shares = team.ws.components.run(prepared, team.codes("alice", "bob"))
    assert [s.custodian for s in shares] == ["alice", "bob", "carol"]
    assert len({s.value for s in shares}) == 3
    whole = components.xor([s.value for s in shares])
    assert key.versions[0].kcv == components.kcv_of(whole)
    assert team.ws.hsm.objects.kcv(key.versions[0].cka_id) == components.kcv_of(whole)
    assert all(s.kcv == components.kcv_of(s.value) for s in shares)
    trail = "\n".join(json.dumps(e.params) for e in team.ws.audit.events(limit=50))
    assert "alice" in trail and shares[0].kcv in trail
    for share in shares:
        assert share.value.hex() not in trail.lower() and share.value.hex().upper() not in trail
    assert "value=<hidden>" in repr(shares[0])


def test_components_entered_by_custodians_are_checked_one_by_one(team: Team) -> None:
    values = [bytes([n]) * 16 for n in (1, 2, 3)]
    typed = [
        components.parse_component(" ".join(v.hex()[i : i + 4] for i in range(0, 32, 4)), 16)
        for v in values
    ]
    assert typed == values
    with pytest.raises(errors.UsageError, match="Component 2 does not match its KCV"):
        components.check_component(typed[1], "000000", [typed[0]], 2)
    with pytest.raises(errors.UsageError, match="same as an earlier"):
        components.check_component(typed[0], components.kcv_of(typed[0]), [typed[0]], 2)
    with pytest.raises(errors.UsageError, match="needs 16"):
        components.parse_component("0011", 16)
    shares = [
        components.Component(
            n, v, components.check_component(v, components.kcv_of(v), values[:i], i + 1)
        )
        for i, (n, v) in enumerate(zip(["alice", "bob", "carol"], values, strict=True))
    ]
    prepared = team.ws.components.prepare(
        label="entered",
        algorithm="AES-128",
        purpose="encrypt",
        custodians=["alice", "bob", "carol"],
        generate=False,
        expected_kcv=components.kcv_of(components.xor(values)),
    )
    key, _ = team.ws.components.run(prepared, team.codes("alice", "carol"), shares)
    assert team.ws.hsm.objects.kcv(key.versions[0].cka_id) == components.kcv_of(
        components.xor(values)
    )


def test_a_wrong_combined_kcv_registers_nothing(team: Team) -> None:
    values = [bytes([n]) * 16 for n in (4, 5, 6)]
    shares = [
        components.Component(n, v, components.kcv_of(v))
        for n, v in zip(["alice", "bob", "carol"], values, strict=True)
    ]
    prepared = team.ws.components.prepare(
        label="bad",
        algorithm="AES-128",
        purpose="encrypt",
        custodians=["alice", "bob", "carol"],
        generate=False,
        expected_kcv="123456",
    )
    before = team.ws.store.keys.count()
    with pytest.raises(errors.PolicyRefused, match="mistyped"):
        team.ws.components.run(prepared, team.codes("alice", "bob"), shares)
    assert team.ws.store.keys.count() == before
    assert team.ws.hsm.objects.find(bytes.fromhex(prepared.operation.params["cka_id"])) is None


def test_fewer_components_than_the_policy_wants_are_refused(team: Team) -> None:
    with pytest.raises(errors.PolicyRefused, match="at least 3 components"):
        team.ws.components.prepare(
            label="two",
            algorithm="AES-128",
            purpose="encrypt",
            custodians=["alice", "bob"],
        )


def test_a_raw_blob_is_imported_only_with_the_kcv_from_paper(
    team: Team, kek: Key, tmp_path: Path
) -> None:
    key = exportable(team)
    export(team, key, kek, tmp_path / "k.json")
    blob = base64.b64decode(json.loads((tmp_path / "k.json").read_text())["wrapped"])
    (tmp_path / "k.bin").write_bytes(blob)
    (tmp_path / "k.hex").write_text(blob.hex() + "\n")
    with pytest.raises(errors.UsageError, match="needs the key's KCV"):
        team.ws.distribution.load_wrapped(
            tmp_path / "k.bin", raw=keyfiles.RawBlob("AES-256", "encrypt", "")
        )
    for name in ("k.bin", "k.hex"):
        wrapped = team.ws.distribution.load_wrapped(
            tmp_path / name, raw=keyfiles.RawBlob("AES-256", "encrypt", key.versions[0].kcv)
        )
        prepared = team.ws.distribution.prepare_import(wrapped, kek.id, label=f"raw-{name}")
        imported = team.ws.distribution.run_import(prepared, wrapped, team.codes("alice", "bob"))
        assert imported.versions[0].kcv == key.versions[0].kcv
    wrong = team.ws.distribution.load_wrapped(
        tmp_path / "k.bin", raw=keyfiles.RawBlob("AES-256", "encrypt", "ABCDEF")
    )
    prepared = team.ws.distribution.prepare_import(wrong, kek.id, label="raw-wrong")
    with pytest.raises(errors.PolicyRefused, match="KCV mismatch"):
        team.ws.distribution.run_import(prepared, wrong, team.codes("bob", "carol"))


def test_refusals_before_the_gate_are_audited_without_values(team: Team, tmp_path: Path) -> None:
    (tmp_path / "cut.json").write_text('{"format": "kmtui-wrapped-key-v1", "manif')
    with pytest.raises(errors.UsageError):
        team.ws.distribution.load_wrapped(tmp_path / "cut.json")
    refused = team.ws.audit.events(action="key.import", limit=1)[0]
    assert (refused.outcome, refused.params["file"]) == ("refused", "cut.json")
    value = bytes(range(16))
    with pytest.raises(errors.UsageError, match="Component 1 does not match"):
        team.ws.components.enter(value.hex(), "000000", [], "alice", 16)
    typo = team.ws.audit.events(action="key.components", limit=1)[0]
    assert (typo.params["custodian"], typo.params["component"]) == ("alice", 1)
    trail = json.dumps([e.params for e in team.ws.audit.events(limit=20)])
    assert value.hex() not in trail.lower()


def test_no_component_or_clear_key_value_is_left_in_the_database_files(team: Team) -> None:
    prepared = team.ws.components.prepare(
        label="zmk-scan",
        algorithm="AES-256",
        purpose="wrap",
        custodians=["alice", "bob", "carol"],
    )
    _, shares = team.ws.components.run(prepared, team.codes("alice", "bob"))
    whole = components.xor([s.value for s in shares])
    path = team.ws.store.path
    data = b"".join(
        p.read_bytes()
        for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm"))
        if p.exists()
    )
    for secret in [whole, *(s.value for s in shares)]:
        for form in (
            secret,
            secret.hex().encode(),
            secret.hex().upper().encode(),
            base64.b64encode(secret),
        ):
            assert form not in data
