"""Exported keys stay wrapped: a key-encryption key never hands a key back in the clear.

The attack: wrap an exportable key under the trusted KEK (or take an exported file), then
C_UnwrapKey it back with SENSITIVE=false, EXTRACTABLE=true and read CKA_VALUE. The trusted KEK is
a public object (the security officer made it), so without an unwrap template even a token user
without the PIN could do it with an exported file. Every KEK kmtui makes carries
CKA_UNWRAP_TEMPLATE (SENSITIVE=true, EXTRACTABLE=false, PRIVATE=true); these tests prove SoftHSM2
enforces it, and that kmtui refuses to export under a KEK that does not.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11

from kmtui.core import errors
from kmtui.core.control.operations import OpKind
from kmtui.core.keys.findings import FindingKind
from kmtui.core.models import Key, new_key_id
from kmtui.core.token import templates
from kmtui.core.token.session import Hsm
from tests.conftest import SoftHsm, Team
from tests.unit.test_distribution import do_import, export, exportable, trusted_kek

CLEAR = {Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True}
"""What the attacker asks C_UnwrapKey for: a key whose value can be read."""


@pytest.fixture
def kek(team: Team, softhsm_token: SoftHsm) -> Key:
    return trusted_kek(team, softhsm_token.so_halves)


def unwrap_attempt(kek_id: bytes, blob: bytes, asked: dict[Attribute, Any]) -> Any:
    """C_UnwrapKey as the logged-in user with the attacker's template: the value it reads back,
    'refused' when the token refuses, 'unreadable' when the copy it made keeps its value."""

    def attack(session: Any) -> str:
        wrapper = session.get_key(id=kek_id, object_class=ObjectClass.SECRET_KEY)
        template = {Attribute.TOKEN: False, Attribute.ENCRYPT: True, Attribute.DECRYPT: True}
        try:
            copy = wrapper.unwrap_key(
                ObjectClass.SECRET_KEY,
                KeyType.AES,
                blob,
                mechanism=Mechanism.AES_KEY_WRAP_PAD,
                capabilities=0,
                template={**template, **asked},
            )
        except p11.PKCS11Error:
            return "refused"
        try:
            return bytes(copy[Attribute.VALUE]).hex()
        except p11.PKCS11Error:
            return "unreadable"
        finally:
            copy.destroy()

    return attack


def test_the_logged_in_user_cannot_unwrap_a_key_under_the_trusted_kek_in_the_clear(
    team: Team, kek: Key
) -> None:
    key = exportable(team)
    dek_id, kek_id = key.versions[0].cka_id, kek.versions[0].cka_id

    def wrap(session: Any) -> bytes:
        dek = session.get_key(id=dek_id, object_class=ObjectClass.SECRET_KEY)
        wrapper = session.get_key(id=kek_id, object_class=ObjectClass.SECRET_KEY)
        return bytes(wrapper.wrap_key(dek, mechanism=Mechanism.AES_KEY_WRAP_PAD))

    blob = team.ws.hsm.call(wrap)
    assert team.ws.hsm.call(unwrap_attempt(kek_id, blob, CLEAR)) in ("refused", "unreadable")


@pytest.mark.parametrize(
    "asked",
    [
        CLEAR,
        {Attribute.SENSITIVE: False},
        {Attribute.EXTRACTABLE: True},
        {Attribute.PRIVATE: False},
        {},  # nothing said: the token's defaults (SoftHSM: SENSITIVE=false) are not accepted
    ],
    ids=["clear", "not-sensitive", "extractable", "public", "defaults"],
)
@pytest.mark.parametrize("trusted", [True, False], ids=["trusted-kek", "import-kek"])
def test_softhsm_enforces_the_unwrap_template_of_every_kek(
    team: Team, softhsm_token: SoftHsm, asked: dict[Attribute, Any], trusted: bool
) -> None:
    """What kmtui relies on, proved on the token: every unwrap the template forbids is refused,
    and the one kmtui asks for (sensitive, not extractable, private) still works."""
    wrapper = (
        trusted_kek(team, softhsm_token.so_halves)
        if trusted
        else team.ws.create_key(
            label="import-kek",
            algorithm="AES-256",
            purpose="wrap",
            approvals=team.codes("alice", "bob"),
        )
    )
    kek_id = wrapper.versions[0].cka_id

    def blob(session: Any) -> bytes:
        probe = session.generate_key(
            KeyType.AES, 128, capabilities=0, template=templates.session_probe()
        )
        try:
            kek = session.get_key(id=kek_id, object_class=ObjectClass.SECRET_KEY)
            return bytes(kek.wrap_key(probe, mechanism=Mechanism.AES_KEY_WRAP_PAD))
        finally:
            probe.destroy()

    wrapped = team.ws.hsm.call(blob)
    assert team.ws.hsm.call(unwrap_attempt(kek_id, wrapped, asked)) == "refused"
    allowed = {Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False, Attribute.PRIVATE: True}
    assert team.ws.hsm.call(unwrap_attempt(kek_id, wrapped, allowed)) == "unreadable"


NO_PIN_UNWRAP = """
import base64, json, sys
import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
request = json.loads(sys.stdin.read())
token = pkcs11.lib(request["module"]).get_token(token_label=request["label"])
with token.open(rw=True) as session:  # a public session: no PIN
    kek = session.get_key(id=bytes.fromhex(request["kek"]), object_class=ObjectClass.SECRET_KEY)
    try:
        copy = kek.unwrap_key(
            ObjectClass.SECRET_KEY, KeyType.AES, base64.b64decode(request["wrapped"]),
            mechanism=Mechanism.AES_KEY_WRAP_PAD, capabilities=0,
            template={Attribute.TOKEN: False, Attribute.PRIVATE: False,
                      Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True,
                      Attribute.ENCRYPT: True},
        )
    except pkcs11.PKCS11Error as exc:
        print("refused", type(exc).__name__)
    else:
        print("value", bytes(copy[Attribute.VALUE]).hex())
"""


def test_without_the_pin_an_exported_file_is_not_unwrapped_under_the_public_trusted_kek(
    team: Team, kek: Key, softhsm_token: SoftHsm, tmp_path: Path
) -> None:
    key = exportable(team)
    export(team, key, kek, tmp_path / "dek.json")
    document = json.loads((tmp_path / "dek.json").read_text())
    proc = subprocess.run(
        [sys.executable, "-c", NO_PIN_UNWRAP],
        input=json.dumps(
            {
                "module": softhsm_token.module,
                "label": softhsm_token.label,
                "kek": kek.versions[0].cka_id.hex(),
                "wrapped": document["wrapped"],
            }
        ),
        env={**os.environ, "SOFTHSM2_CONF": str(softhsm_token.conf)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert proc.stdout.startswith("refused"), "the exported key came back in the clear"
    assert base64.b64decode(document["wrapped"])  # the file itself was written


def test_the_export_import_round_trip_still_works_under_the_trusted_kek(
    team: Team, kek: Key, tmp_path: Path
) -> None:
    key = exportable(team)
    export(team, key, kek, tmp_path / "dek.json")
    imported = do_import(team, tmp_path / "dek.json", kek, "dek-restored")
    attrs = team.ws.hsm.objects.attributes(imported.versions[0].cka_id, ObjectClass.SECRET_KEY)
    assert (attrs["SENSITIVE"], attrs["EXTRACTABLE"], attrs["PRIVATE"]) == (True, False, True)
    assert imported.versions[0].kcv == key.versions[0].kcv


OLD_STYLE_KEK = """
import json, sys
import pkcs11
from pkcs11 import Attribute, KeyType
from kmtui.core.token import templates
request = json.loads(sys.stdin.read())
made = templates.build("AES-256", "wrap", cka_id=bytes.fromhex(request["cka_id"]),
                       label="made before unwrap templates", trusted=True)
secret = {k: v for k, v in made.secret.items() if k != Attribute.UNWRAP_TEMPLATE}
token = pkcs11.lib(request["module"]).get_token(token_label=request["label"])
with token.open(rw=True, so_pin=request["so_pin"]) as session:
    session.generate_key(KeyType.AES, 256, capabilities=0, template=secret)
"""


def replace_with_old_style(team: Team, softhsm_token: SoftHsm, kek: Key) -> None:
    """The trusted KEK's token object as kmtui made it before unwrap templates (an old registry)."""
    cka_id = kek.versions[0].cka_id
    team.ws.hsm.objects.destroy(cka_id)
    subprocess.run(
        [sys.executable, "-c", OLD_STYLE_KEK],
        input=json.dumps(
            {
                "module": softhsm_token.module,
                "label": softhsm_token.label,
                "so_pin": softhsm_token.so_pin,
                "cka_id": cka_id.hex(),
            }
        ),
        env={**os.environ, "SOFTHSM2_CONF": str(softhsm_token.conf)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def test_a_kek_that_unwraps_in_the_clear_is_refused_for_export_and_reported(
    team: Team, kek: Key, softhsm_token: SoftHsm
) -> None:
    key = exportable(team)
    replace_with_old_style(team, softhsm_token, kek)
    with pytest.raises(errors.PolicyRefused, match="in the clear") as refused:
        team.ws.distribution.prepare_export(key.id, kek.id)
    assert "--trusted" in (refused.value.hint or "")
    with pytest.raises(errors.HsmError, match="failed: unwrap-in-clear-refused"):
        team.ws.run(team.ws.prepare(OpKind.KEY_SELFCHECK, kek.id), [])
    report = team.ws.reconciler.run()
    drift = [f for f in report.findings if f.key_id == kek.id and f.kind == FindingKind.DRIFT]
    assert len(drift) == 1 and "in the clear" in drift[0].detail


def test_a_kek_self_check_proves_the_token_refuses_clear_unwraps(team: Team, kek: Key) -> None:
    checks = team.ws.run(team.ws.prepare(OpKind.KEY_SELFCHECK, kek.id), []).facts["checks"]
    assert checks["wrap-unwrap"] == checks["unwrap-in-clear-refused"] == "pass"


def test_a_kek_that_reads_back_right_but_unwraps_in_the_clear_is_not_adopted(hsm: Hsm) -> None:
    template = templates.build(
        "AES-256", "wrap", cka_id=templates.cka_id(new_key_id(), 1), label="no unwrap template"
    )
    made_without = {k: v for k, v in template.secret.items() if k != Attribute.UNWRAP_TEMPLATE}
    hsm.call(lambda s: s.generate_key(KeyType.AES, 256, capabilities=0, template=made_without))
    with pytest.raises(errors.TemplateMismatch, match="UNWRAP_TEMPLATE"):
        hsm.keygen.adopt(template)
    hsm.objects.destroy(template.cka_id)


def test_a_kek_entered_from_components_refuses_clear_unwraps_too(team: Team) -> None:
    prepared = team.ws.components.prepare(
        label="zmk", algorithm="AES-256", purpose="wrap", custodians=["alice", "bob", "carol"]
    )
    key, _ = team.ws.components.run(prepared, team.codes("alice", "bob"))
    assert team.ws.hsm.wrapping.refuses_clear_unwrap(key.versions[0].cka_id)
