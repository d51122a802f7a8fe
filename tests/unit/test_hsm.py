"""The token layer against a real SoftHSM2 token."""

from __future__ import annotations

import contextlib
import hashlib
import threading
from typing import Any

import pkcs11
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11
from pkcs11.attributes import AttributeMapper

from kmtui.core import errors
from kmtui.core.models import new_key_id
from kmtui.core.token import templates
from kmtui.core.token.session import Hsm, on_hsm_thread
from tests.conftest import SoftHsm

COMBINATIONS = [
    pytest.param(
        name,
        purpose.value,
        marks=[pytest.mark.needs("unwrap_template")] if purpose == templates.Purpose.WRAP else [],
    )
    for name, spec in templates.ALGORITHMS.items()
    for purpose in spec.purposes
]


def make(hsm: Hsm, algorithm: str, purpose: str | None = None, exportable: bool = False):
    key_id = new_key_id()
    tpl = templates.build(
        algorithm,
        purpose,
        cka_id=templates.cka_id(key_id, 1),
        label=f"t-{key_id}",
        exportable=exportable,
    )
    return tpl, hsm.keygen.generate(tpl)


@pytest.mark.parametrize(("algorithm", "purpose"), COMBINATIONS)
def test_each_template_reads_back_exactly_as_built(hsm: Hsm, algorithm: str, purpose: str) -> None:
    tpl, key = make(hsm, algorithm, purpose)
    classes = (
        [ObjectClass.SECRET_KEY]
        if tpl.algorithm.symmetric
        else [ObjectClass.PUBLIC_KEY, ObjectClass.PRIVATE_KEY]
    )
    assert key.object_classes == tuple(c.name for c in classes)
    profile = hsm.profile
    sent = templates.without(tpl, profile.omit())  # less what this token rejects (none on SoftHSM2)
    for cls in classes:
        expected = {a.name: v for a, v in sent.expected(cls, local=profile.reports_local).items()}
        if not profile.modulus_bits:
            expected.pop("MODULUS_BITS", None)
        assert key.attributes[cls.name] == expected
        shown = hsm.objects.attributes(tpl.cka_id, cls)
        if cls != ObjectClass.PUBLIC_KEY:
            assert shown["SENSITIVE"] is True
            assert shown["EXTRACTABLE"] is False
            assert shown["NEVER_EXTRACTABLE"] is True
        assert shown["MODIFIABLE"] is False
    if tpl.algorithm.symmetric:
        assert len(key.kcv) == 6
    else:
        assert key.fingerprint.startswith("SHA256:")


@pytest.mark.needs("exportable_keys")
def test_exportable_keys_may_only_be_wrapped_by_trusted_keys(hsm: Hsm) -> None:
    tpl, _ = make(hsm, "AES-256", "encrypt", exportable=True)
    shown = hsm.objects.attributes(tpl.cka_id, ObjectClass.SECRET_KEY)
    assert shown["EXTRACTABLE"] is True
    assert shown["WRAP_WITH_TRUSTED"] is True
    assert shown["SENSITIVE"] is True


@pytest.mark.parametrize(
    ("algorithm", "purpose"), [("AES-128", "encrypt"), ("AES-256", "encrypt"), ("AES-256", "wrap")]
)
def test_no_template_lets_one_key_both_wrap_and_encrypt(algorithm: str, purpose: str) -> None:
    tpl = templates.build(algorithm, purpose, cka_id=b"x", label="x")
    wraps = tpl.secret[Attribute.WRAP] or tpl.secret[Attribute.UNWRAP]
    crypts = tpl.secret[Attribute.ENCRYPT] or tpl.secret[Attribute.DECRYPT]
    assert wraps != crypts
    assert not templates.violations(ObjectClass.SECRET_KEY, tpl.secret)


def test_violations_catches_a_default_style_template() -> None:
    lax = {a: True for a in templates.USAGE} | {Attribute.SENSITIVE: False}
    problems = templates.violations(ObjectClass.PRIVATE_KEY, lax)
    assert "SENSITIVE is not true" in problems
    assert "both wraps and encrypts" in problems
    assert "private key both signs and decrypts" in problems
    assert "EXTRACTABLE without WRAP_WITH_TRUSTED" in problems


def _wrap_then_decrypt(cka_id: bytes):
    """An attacker with the PIN makes keys with python-pkcs11's permissive defaults, wraps the
    target with them and decrypts the blob; returns whatever key values came out in the clear."""

    def attack(session: Any) -> list[str]:
        target = session.get_key(id=cka_id, object_class=ObjectClass.SECRET_KEY)
        pub, priv = session.generate_keypair(KeyType.RSA, 2048, store=False)
        aes = session.generate_key(KeyType.AES, 256, store=False)
        recovered = []
        for wrapper, unwrapper, mech in (
            (pub, priv, Mechanism.RSA_PKCS),
            (aes, aes, Mechanism.AES_KEY_WRAP),
            (aes, aes, Mechanism.AES_ECB),
        ):
            try:
                blob = wrapper.wrap_key(target, mechanism=mech)
                recovered.append(unwrapper.decrypt(blob, mechanism=mech).hex())
            except p11.PKCS11Error:
                continue
        with contextlib.suppress(p11.PKCS11Error):
            recovered.append(target[Attribute.VALUE].hex())
        return recovered

    return attack


@pytest.mark.parametrize(
    "exportable",
    [
        pytest.param(False, marks=pytest.mark.needs("guards_non_extractable")),
        pytest.param(True, marks=pytest.mark.needs("exportable_keys")),
    ],
)
def test_wrap_then_decrypt_trick_cannot_extract_a_kmtui_key(hsm: Hsm, exportable: bool) -> None:
    tpl, _ = make(hsm, "AES-256", "encrypt", exportable=exportable)
    assert hsm.call(_wrap_then_decrypt(tpl.cka_id)) == []


def test_the_profile_s_word_on_non_extractable_keys_is_what_the_attack_finds(
    hsm: Hsm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a token whose profile says it wraps them (NSS softokn), the attack does take a key
    kmtui calls non-extractable out: that is why kmtui refuses such keys unless acknowledged."""
    monkeypatch.setattr(hsm, "accept_wrappable_keys", True)
    tpl, _ = make(hsm, "AES-256", "encrypt")
    recovered = hsm.call(_wrap_then_decrypt(tpl.cka_id))
    assert (recovered == []) is hsm.profile.guards_non_extractable


def test_wrap_then_decrypt_trick_does_extract_a_key_made_with_library_defaults(hsm: Hsm) -> None:
    """Control: the attack above is real, so its empty result for kmtui keys means something."""
    cka_id = templates.cka_id(new_key_id(), 1)
    hsm.call(
        lambda s: s.generate_key(
            KeyType.AES, 256, id=cka_id, store=False, template={Attribute.EXTRACTABLE: True}
        )
    )
    recovered = hsm.call(_wrap_then_decrypt(cka_id))
    assert recovered and all(len(bytes.fromhex(v)) >= 32 for v in recovered)


def test_wrong_pin_is_refused_with_a_clear_message_and_leaves_no_session(
    softhsm_token: SoftHsm,
) -> None:
    token = Hsm(softhsm_token.module, token_label=softhsm_token.login_label)
    with pytest.raises(errors.PinIncorrect) as info:
        token.login("not-the-pin")
    assert "PIN was not accepted" in str(info.value)
    assert "not-the-pin" not in str(info.value)
    assert not token.logged_in
    token.login(softhsm_token.pin)
    assert token.logged_in
    token.logout()
    assert not token.logged_in


@pytest.mark.needs("so_login")
def test_a_failed_log_in_leaves_no_session_that_keeps_the_security_officer_out(
    softhsm_token: SoftHsm,
) -> None:
    token = Hsm(softhsm_token.module, token_label=softhsm_token.login_label)
    with pytest.raises(errors.PinIncorrect):
        token.login("not-the-pin")
    so_token = on_hsm_thread(
        lambda: pkcs11.lib(softhsm_token.module).get_token(token_label=softhsm_token.login_label)
    )
    ro_session = on_hsm_thread(lambda: so_token.open(so_pin=softhsm_token.so_pin, rw=True))
    on_hsm_thread(ro_session.close)
    token.login(softhsm_token.pin)
    assert token.logged_in
    token.logout()
    assert not token.logged_in


def test_missing_module_says_where_it_looked(tmp_path) -> None:
    missing = tmp_path / "libnothere.so"
    with pytest.raises(errors.ModuleNotFound) as info:
        Hsm(str(missing), token_label="x").open()
    assert str(missing) in str(info.value)
    assert "config.toml" in str(info.value)


def test_a_file_that_is_not_a_pkcs11_module_is_refused(tmp_path) -> None:
    bogus = tmp_path / "libbogus.so"
    bogus.write_bytes(b"not a shared object")
    with pytest.raises(errors.ModuleNotFound) as info:
        Hsm(str(bogus), token_label="x").open()
    assert "Could not load" in str(info.value)


def test_unknown_token_names_the_tokens_present(softhsm_token: SoftHsm, hsm: Hsm) -> None:
    with pytest.raises(errors.TokenNotFound) as info:
        Hsm(softhsm_token.module, token_label="no-such-token").open()
    assert "'kmtui-test'" in str(info.value)


def test_token_found_by_serial_and_a_serial_several_tokens_share_is_refused(
    softhsm_token: SoftHsm, hsm: Hsm
) -> None:
    shared = [s for s in hsm.slots() if s.token_serial == softhsm_token.serial]
    if len(shared) == 1:  # SoftHSM2: serials are unique
        info = Hsm(softhsm_token.module, token_serial=softhsm_token.serial).open()
        assert info.label == softhsm_token.label
        assert info.serial == softhsm_token.serial
    else:  # NSS softokn: every token has serial 0000000000000000
        with pytest.raises(errors.TokenNotFound, match=f"{len(shared)} tokens .* answer to"):
            Hsm(softhsm_token.module, token_serial=softhsm_token.serial).open()
    both = Hsm(softhsm_token.module, token_serial=softhsm_token.serial, token_label="kmtui-test")
    assert both.open().label == "kmtui-test"
    with pytest.raises(errors.TokenNotFound):  # label and serial must both match
        Hsm(softhsm_token.module, token_serial="not-it", token_label="kmtui-test").open()


class _RawLabels(AttributeMapper):
    def __init__(self) -> None:
        super().__init__()
        self.register_handler(Attribute.LABEL, bytes, bytes)


@pytest.mark.needs("private_data")  # it plants a data object too
def test_listing_tolerates_foreign_objects_with_non_utf8_labels(
    softhsm_token: SoftHsm, hsm: Hsm
) -> None:
    def plant() -> None:
        token = pkcs11.lib(softhsm_token.module).get_token(token_label=softhsm_token.label)
        with token.open(rw=True, attribute_mapper=_RawLabels()) as session:
            session.create_object(
                {
                    Attribute.CLASS: ObjectClass.DATA,
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: True,
                    Attribute.LABEL: b"\xff\xfe\x1b[31mforeign",
                    Attribute.VALUE: b"x",
                }
            )
            session.generate_key(KeyType.AES, 128, store=True, id=b"\x00\x01", label=b"\xc3\x28bad")

    on_hsm_thread(plant)
    objects = hsm.objects.scan()
    foreign = [o for o in objects if not o.label_is_utf8]
    assert len(foreign) >= 2
    assert all("\ufffd" in o.label for o in foreign)
    assert any(o.object_class == "DATA" for o in foreign)
    assert any(o.cka_id == b"\x00\x01" and o.key_type == "AES" for o in foreign)
    assert templates.parse_cka_id(b"\x00\x01") is None


def test_concurrent_calls_from_two_threads_run_on_one_pkcs11_thread(hsm: Hsm) -> None:
    tpl, key = make(hsm, "AES-128", "encrypt")
    seen: set[int] = set()
    results: list[str] = []
    failures: list[BaseException] = []

    def hammer() -> None:
        try:
            for _ in range(40):
                results.append(hsm.objects.kcv(tpl.cka_id))
                hsm.call(lambda session: seen.add(threading.get_ident()))
                assert hsm.objects.find(tpl.cka_id, ObjectClass.SECRET_KEY) is not None
        except BaseException as exc:  # collected and re-raised in the main thread
            failures.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not failures
    assert results == [key.kcv] * 80
    assert len(seen) == 1
    assert threading.get_ident() not in seen


def test_kcv_matches_the_standard_computation_for_a_known_key(hsm: Hsm) -> None:
    value = bytes(range(32))
    cka_id = templates.cka_id(new_key_id(), 1)

    def plant(session: Any) -> None:
        session.create_object(
            {
                Attribute.CLASS: ObjectClass.SECRET_KEY,
                Attribute.KEY_TYPE: KeyType.AES,
                Attribute.TOKEN: False,
                Attribute.VALUE: value,
                Attribute.ID: cka_id,
                Attribute.ENCRYPT: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
            }
        )

    hsm.call(plant)
    encryptor = Cipher(algorithms.AES(value), modes.ECB()).encryptor()
    expected = (encryptor.update(bytes(16)) + encryptor.finalize())[:3].hex().upper()
    assert hsm.objects.kcv(cka_id) == expected


def test_ec_fingerprint_is_sha256_of_the_public_key_info(hsm: Hsm) -> None:
    tpl, key = make(hsm, "EC-P256")

    def point(session: Any) -> bytes:
        pub = session.get_key(id=tpl.cka_id, object_class=ObjectClass.PUBLIC_KEY)
        return bytes(pub[Attribute.EC_POINT])

    raw = hsm.call(point)
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw[2:])
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert key.fingerprint == "SHA256:" + hashlib.sha256(der).hexdigest()


def test_a_key_read_back_with_other_attributes_is_refused(
    hsm: Hsm, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = hsm.objects.read_attributes

    def tampered(obj: Any, attrs: list[Attribute]) -> dict[Attribute, Any]:
        values = real(obj, attrs)
        values[Attribute.EXTRACTABLE] = True
        return values

    monkeypatch.setattr(hsm.objects, "read_attributes", tampered)
    with pytest.raises(errors.TemplateMismatch) as info:
        make(hsm, "AES-256")
    assert "SECRET_KEY.EXTRACTABLE" in info.value.differences
    assert "quarantined" in str(info.value)


def test_a_token_without_the_mechanism_says_so(hsm: Hsm, monkeypatch: pytest.MonkeyPatch) -> None:
    offered = frozenset(m for m in hsm._mechs() if m != Mechanism.EC_KEY_PAIR_GEN)
    monkeypatch.setattr(hsm, "_mechanisms", offered)
    with pytest.raises(errors.MechanismNotSupported) as info:
        make(hsm, "EC-P384")
    assert "EC-P384" in str(info.value)


def test_a_removed_token_is_reported_as_removed(hsm: Hsm, monkeypatch: pytest.MonkeyPatch) -> None:
    session = hsm._session

    class Unplugged:
        def __getattr__(self, name: str) -> Any:
            def fail(*args: Any, **kwargs: Any) -> Any:
                raise p11.DeviceRemoved()

            return fail

    monkeypatch.setattr(hsm, "_session", Unplugged())
    with pytest.raises(errors.TokenRemoved) as info:
        hsm.objects.scan()
    assert "no longer reachable" in str(info.value)
    monkeypatch.setattr(hsm, "_session", session)


def test_find_by_id_and_class_and_destroy(hsm: Hsm) -> None:
    tpl, _ = make(hsm, "EC-P256")
    pub = hsm.objects.find(tpl.cka_id, ObjectClass.PUBLIC_KEY)
    priv = hsm.objects.find(tpl.cka_id, ObjectClass.PRIVATE_KEY)
    assert pub is not None and pub.object_class == "PUBLIC_KEY"
    assert priv is not None and priv.object_class == "PRIVATE_KEY"
    assert hsm.objects.find(tpl.cka_id, ObjectClass.SECRET_KEY) is None
    assert hsm.objects.destroy(tpl.cka_id) == 2
    assert hsm.objects.find(tpl.cka_id) is None
    with pytest.raises(errors.ObjectGone):
        hsm.objects.fingerprint(tpl.cka_id)


def test_a_key_destroyed_behind_kmtuis_back_is_reported_gone(hsm: Hsm) -> None:
    tpl, key = make(hsm, "AES-128")
    assert hsm.objects.kcv(tpl.cka_id) == key.kcv  # the handle is now cached

    def destroy_elsewhere(session: Any) -> None:
        fresh = session.token.open(rw=True)
        try:
            fresh.get_key(id=tpl.cka_id, object_class=ObjectClass.SECRET_KEY).destroy()
        finally:
            fresh.close()

    hsm.call(destroy_elsewhere)
    with pytest.raises(errors.ObjectGone):
        hsm.objects.kcv(tpl.cka_id)


def test_log_out_forgets_the_handles_and_head_objects_every_part_remembered(
    hsm: Hsm, softhsm_token: SoftHsm
) -> None:
    tpl, key = make(hsm, "AES-128")
    registry = f"test-{new_key_id()}"
    hsm.signer.write_head(registry, b'{"seq": 1}')
    assert hsm.objects.cached(tpl.cka_id, ObjectClass.SECRET_KEY) is not None
    assert hsm.signer._heads
    hsm.logout()
    assert hsm.objects.cached(tpl.cka_id, ObjectClass.SECRET_KEY) is None
    assert not hsm.signer._heads
    hsm.login(softhsm_token.pin)
    assert hsm.objects.kcv(tpl.cka_id) == key.kcv
    assert hsm.signer.read_head(registry) == b'{"seq": 1}'


def test_token_info_and_slots(hsm: Hsm, softhsm_token: SoftHsm) -> None:
    info = hsm.info()
    assert info.label == softhsm_token.label
    assert info.logged_in
    assert info.manufacturer == (
        "SoftHSM project" if softhsm_token.kind == "softhsm" else "Mozilla Foundation"
    )
    labels = {s.token_label for s in hsm.slots()}
    assert {softhsm_token.label, softhsm_token.login_label} <= labels
    assert "AES_KEY_GEN" in hsm.mechanisms()


def test_templates_refuse_unsupported_combinations() -> None:
    with pytest.raises(errors.UsageError, match="cannot be used to sign"):
        templates.build("AES-256", "sign", cka_id=b"x", label="x")
    with pytest.raises(errors.UsageError, match="Unknown algorithm"):
        templates.build("DES", None, cka_id=b"x", label="x")
    with pytest.raises(errors.UsageError, match="label"):
        templates.build("AES-256", None, cka_id=b"x", label="   ")


def test_cka_id_round_trips() -> None:
    assert templates.parse_cka_id(templates.cka_id("kabc", 7)) == ("kabc", 7)
    assert templates.parse_cka_id(b"kmtui:kabc:x") is None
