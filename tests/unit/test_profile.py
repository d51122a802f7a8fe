"""The token profile: probed on the real token, and each declared alternative run on it.

A token that lacks a capability is made by wrapping the real SoftHSM2 session (it refuses what
such a token refuses) or by giving the real token the profile such a token has: the alternative
then runs for real on the token and is checked against an independent computation.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.keywrap import aes_key_wrap
from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11 import exceptions as p11

from kmtui.core import errors
from kmtui.core.models import new_key_id
from kmtui.core.token import profile, templates
from kmtui.core.token.objects import computed_kcv
from kmtui.core.token.profile import PROBE_ID, PROBE_LABEL, TokenProfile
from kmtui.core.token.session import Hsm, on_hsm_thread
from tests.conftest import SoftHsm

PROXY = "/usr/lib/x86_64-linux-gnu/p11-kit-proxy.so"


def leftovers(hsm: Hsm) -> list[Any]:
    def run(session: Any) -> list[Any]:
        return list(session.get_objects({Attribute.LABEL: PROBE_LABEL})) + list(
            session.get_objects({Attribute.ID: PROBE_ID})
        )

    return hsm.call(run)


def fresh_probe(hsm: Hsm) -> TokenProfile:
    return hsm.call(lambda session: profile.probe(session, frozenset(hsm._mechs())))


EXPECTED = {
    "softhsm": TokenProfile(),
    # What the issue measured on NSS softokn 3.87 by hand, found by the probe.
    "nss": TokenProfile(
        rejected=("COPYABLE", "DESTROYABLE"),
        reports_local=False,
        check_value=False,
        modulus_bits=False,
        gcm=False,
        guards_non_extractable=False,
        guards_wrap_with_trusted=False,
        unwrap_template=False,
        private_data=False,
    ),
}


def test_each_test_token_is_probed_as_it_behaves_and_the_probe_leaves_nothing(
    hsm: Hsm, softhsm_token: SoftHsm
) -> None:
    found = fresh_probe(hsm)
    assert found == EXPECTED[softhsm_token.kind], found.as_dict()
    verdicts = {verdict for _, verdict, _ in found.rows()}
    if softhsm_token.kind == "softhsm":  # every capability present: nothing replaced or refused
        assert verdicts == {"used"}
        assert found.sealing == profile.SEAL_GCM and found.head_store == profile.HEAD_DATA
    else:
        assert verdicts == {"used", "replaced", "refused"}
        assert found.sealing == profile.SEAL_CBC_HMAC and found.head_store == profile.HEAD_LABEL
    assert found.audit_key == "EC-P256"
    assert leftovers(hsm) == []
    assert hsm.profile == found  # what log-in probed is what a probe finds now


def test_a_crashed_probe_s_object_is_cleared_by_the_next_probe(hsm: Hsm) -> None:
    def plant(session: Any) -> None:
        session.generate_key(
            KeyType.AES,
            128,
            capabilities=0,
            template={Attribute.TOKEN: True, Attribute.ID: PROBE_ID, Attribute.LABEL: "left"},
        )

    hsm.call(plant)
    assert leftovers(hsm)
    fresh_probe(hsm)
    assert leftovers(hsm) == []


class Rejecting:
    """The real session, refusing a token key template that carries any of `refused`, and the
    wraps of non-extractable keys not at all (as NSS softokn does: it is told here by CKA_ID)."""

    def __init__(self, session: Any, refused: set[Attribute]) -> None:
        self._session = session
        self._refused = refused

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)

    def generate_key(self, *args: Any, template: Any = None, **kwargs: Any) -> Any:
        if template and template.get(Attribute.TOKEN) and self._refused & set(template):
            raise p11.AttributeTypeInvalid()
        return self._session.generate_key(*args, template=template, **kwargs)

    def generate_keypair(self, *args: Any, **kwargs: Any) -> Any:
        for side in ("public_template", "private_template"):
            if kwargs[side].get(Attribute.TOKEN) and self._refused & set(kwargs[side]):
                raise p11.AttributeTypeInvalid()
        return self._session.generate_keypair(*args, **kwargs)


def test_attributes_a_token_rejects_are_found_one_by_one_and_left_out_of_its_keys(
    hsm: Hsm, monkeypatch: pytest.MonkeyPatch
) -> None:
    refused = {Attribute.COPYABLE, Attribute.DESTROYABLE}
    monkeypatch.setattr(hsm, "_session", Rejecting(hsm._session, refused))
    found = fresh_probe(hsm)
    assert found.rejected == ("COPYABLE", "DESTROYABLE")
    assert "left out of every template: COPYABLE, DESTROYABLE" in dict(
        (name, detail) for name, _, detail in found.rows()
    ).get("template attributes", "")
    monkeypatch.setattr(hsm, "_profile", found)
    key_id = new_key_id()
    for algorithm in ("AES-256", "EC-P256"):
        template = templates.build(
            algorithm, None, cka_id=templates.cka_id(key_id, 1), label="kept"
        )
        if template.secret:  # the full template is refused by this token
            with pytest.raises(p11.AttributeTypeInvalid):
                on_hsm_thread(hsm._session.generate_key, KeyType.AES, 256, template=template.secret)
        made = hsm.keygen.generate(template)  # proved by its read-back, less what was left out
        for attributes in made.attributes.values():
            assert "COPYABLE" not in attributes and "DESTROYABLE" not in attributes
            assert attributes.get("SENSITIVE", True) is True
        hsm.objects.destroy(template.cka_id)
        key_id = new_key_id()


def test_keys_a_token_would_wrap_are_refused_unless_the_custodians_acknowledged_it(
    hsm: Hsm, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hsm, "_profile", replace(hsm.profile, guards_non_extractable=False))
    monkeypatch.setattr(hsm, "accept_wrappable_keys", False)
    template = templates.build(
        "AES-256", "encrypt", cka_id=templates.cka_id(new_key_id(), 1), label="claimed"
    )
    with pytest.raises(errors.MechanismNotSupported, match="wraps keys marked non-extractable"):
        hsm.keygen.generate(template)
    assert hsm.objects.find(template.cka_id) is None
    monkeypatch.setattr(hsm, "accept_wrappable_keys", True)
    assert hsm.keygen.generate(template).kcv
    hsm.objects.destroy(template.cka_id)


def test_exportable_keys_are_refused_where_wrap_with_trusted_is_not_honoured(
    hsm: Hsm, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hsm, "_profile", replace(hsm.profile, guards_wrap_with_trusted=False))
    template = templates.build(
        "AES-256", "encrypt", cka_id=templates.cka_id(new_key_id(), 1), label="x", exportable=True
    )
    with pytest.raises(errors.MechanismNotSupported, match="WRAP_WITH_TRUSTED key under an"):
        hsm.keygen.generate(template)
    assert hsm.objects.find(template.cka_id) is None


def _by_value(hsm: Hsm, key_type: KeyType, value: bytes, **usage: bool) -> Any:
    def run(session: Any) -> Any:
        return session.create_object(
            {
                Attribute.CLASS: ObjectClass.SECRET_KEY,
                Attribute.KEY_TYPE: key_type,
                Attribute.TOKEN: False,
                Attribute.VALUE: value,
                **{Attribute[name]: flag for name, flag in usage.items()},
            }
        )

    return hsm.call(run)


def test_computed_kcvs_match_an_independent_computation_for_each_kind(hsm: Hsm) -> None:
    value = os.urandom(32)
    cases = [
        (
            KeyType.AES,
            {"ENCRYPT": True},
            Cipher(algorithms.AES(value), modes.ECB()).encryptor().update(bytes(16))[:3],
        ),
        (
            KeyType.GENERIC_SECRET,
            {"SIGN": True},
            hmac.new(value, bytes(16), hashlib.sha256).digest()[:3],
        ),
        (KeyType.AES, {"WRAP": True, "ENCRYPT": False}, aes_key_wrap(value, bytes(16))[:3]),
    ]
    for key_type, usage, want in cases:
        key = _by_value(hsm, key_type, value, **usage)
        attrs = {Attribute.KEY_TYPE: key_type, **{Attribute[k]: v for k, v in usage.items()}}
        assert hsm.call(lambda s, k=key, a=attrs: computed_kcv(s, k, a)) == want.hex().upper()
        hsm.call(lambda _s, k=key: k.destroy())


def test_seeds_are_sealed_encrypt_then_mac_where_gcm_is_missing(
    hsm: Hsm, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hsm, "_profile", replace(hsm.profile, gcm=False))
    seed = os.urandom(20)
    blob = hsm.sealing.seal(seed, b"operator alice")
    assert len(blob) == 16 + 32 + 32  # IV, two CBC blocks (20 bytes padded), HMAC-SHA256
    assert hsm.sealing.unseal(blob, b"operator alice") == seed
    for damaged, aad in (
        (blob[:20] + bytes([blob[20] ^ 1]) + blob[21:], b"operator alice"),
        (blob[:-1] + bytes([blob[-1] ^ 1]), b"operator alice"),
        (blob, b"operator bob"),
        (blob[:40], b"operator alice"),
    ):
        with pytest.raises(errors.HsmError, match="failed its integrity check"):
            hsm.sealing.unseal(damaged, aad)
    monkeypatch.setattr(hsm, "_profile", replace(hsm.profile, gcm=False, cbc_pad_hmac=False))
    with pytest.raises(errors.MechanismNotSupported, match="cannot seal operator seeds"):
        hsm.sealing.seal(seed, b"operator alice")


def test_the_head_and_the_pin_live_in_key_labels_where_data_objects_are_refused(
    hsm: Hsm, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hsm, "_profile", replace(hsm.profile, private_data=False))
    registry = "r" + new_key_id()
    assert hsm.signer.read_head(registry) is None
    for seq in (1, 2, 3):
        hsm.signer.write_head(registry, json.dumps({"seq": seq, "hash": "ab" * 32}).encode())
    hsm.signer.forget()
    assert json.loads(hsm.signer.read_head(registry) or b"")["seq"] == 3
    hsm.signer.pin(registry)
    assert registry in hsm.signer.pinned()

    def holders(session: Any) -> list[dict[Attribute, Any]]:
        found = []
        for cka_id in (b"kmtui:sys-head:" + registry.encode(), b"kmtui:sys-pin:1"):
            for obj in session.get_objects({Attribute.ID: cka_id}):
                found.append(
                    obj.get_attributes(
                        [Attribute.CLASS, Attribute.PRIVATE, *templates.USAGE, Attribute.LABEL]
                    )
                )
        for obj in session.get_objects({Attribute.CLASS: ObjectClass.DATA}):
            assert registry not in str(obj[Attribute.LABEL])  # no data object was made
        return found

    found = hsm.call(holders)
    assert len(found) == 2  # one head (moved, not added to) and the pin
    for attrs in found:
        assert attrs[Attribute.CLASS] == ObjectClass.SECRET_KEY and attrs[Attribute.PRIVATE]
        assert not any(attrs[u] for u in templates.USAGE)  # they can do nothing


def test_log_in_goes_through_the_function_list_of_a_module_that_exports_nothing_else(
    softhsm_token: SoftHsm, tmp_path: Path
) -> None:
    if not Path(PROXY).exists():
        pytest.fail(f"p11-kit-proxy not found at {PROXY}: run `make test`, which installs it.")
    import ctypes

    with pytest.raises(AttributeError):
        ctypes.CDLL(PROXY).C_Login  # noqa: B018 - the proxy exports no C_Login to find by name
    code = (
        "import sys; from kmtui.core import errors; from kmtui.core.token.session import Hsm\n"
        f"hsm = Hsm({PROXY!r}, token_label={softhsm_token.login_label!r})\n"
        "try:\n    hsm.login('not-the-pin-0000')\n"
        "except errors.PinIncorrect:\n    print('refused')\n"
        "print(hsm.login(sys.stdin.read()).logged_in, hsm.profile.sealing)\n"
        "hsm.logout(); print(hsm.info().logged_in)\n"
    )
    env = {**os.environ, "SOFTHSM2_CONF": str(softhsm_token.conf)}
    done = subprocess.run(
        [sys.executable, "-c", code],
        input=softhsm_token.pin,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    sealing = EXPECTED[softhsm_token.kind].sealing.split()
    assert done.stdout.split() == ["refused", "True", *sealing, "False"]
