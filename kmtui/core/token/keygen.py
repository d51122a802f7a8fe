"""Keys made on the token from kmtui's templates, each one proved by reading it back."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

from kmtui.core import errors
from kmtui.core.token import templates
from kmtui.core.token.objects import PUBLIC_VALUE_ATTRS, aes_kcv, spki_fingerprint
from kmtui.core.token.records import GeneratedKey
from kmtui.core.token.templates import SYSTEM_PREFIX, KeyTemplate, violations

if TYPE_CHECKING:
    from kmtui.core.token.session import Hsm


def create_objects(session: Any, template: KeyTemplate) -> dict[ObjectClass, Any]:
    """The token objects a template describes, made in `session` exactly as it says (every
    capability from the template, none from the library's defaults). Callers prove them.

    The only place a key is made on a token: Keygen.generate and create_public use it, and so does
    the security officer's child process (kmtui.core.token.officer), whose session is the SO's.
    """
    spec = template.algorithm
    if template.public and not template.private:  # a public key given by value (a recipient)
        return {ObjectClass.PUBLIC_KEY: session.create_object(template.public)}
    if spec.symmetric:
        key = session.generate_key(
            spec.key_type,
            spec.bits,
            capabilities=0,
            mechanism=template.mechanism,
            template=template.secret,
        )
        return {ObjectClass.SECRET_KEY: key}
    public, private = session.generate_keypair(
        spec.key_type,
        spec.bits if spec.key_type == KeyType.RSA else None,
        capabilities=0,
        mechanism=template.mechanism,
        public_template=template.public,
        private_template=template.private,
    )
    return {ObjectClass.PUBLIC_KEY: public, ObjectClass.PRIVATE_KEY: private}


def session_probe(session: Any, fit: Callable[[dict[Attribute, Any]], dict[Attribute, Any]]) -> Any:
    """A throw-away AES-128 session key (never on the token: `templates.session_probe`, `fit`
    to the token) that proves what a key-encryption key does with a key it wraps; the caller
    destroys it."""
    return session.generate_key(
        KeyType.AES, 128, capabilities=0, template=fit(templates.session_probe())
    )


class Keygen:
    """Creates keys in the logged-in session and refuses any that read back other than asked."""

    def __init__(self, hsm: Hsm) -> None:
        self._hsm = hsm

    def generate(self, template: KeyTemplate) -> GeneratedKey:
        """Create a key (or key pair) from a kmtui template and prove it came out as asked."""
        return self._hsm.run(self.make, template)

    def make(self, template: KeyTemplate) -> GeneratedKey:
        """`generate` for code already on the PKCS#11 thread (the room's own keys)."""
        session = self._hsm.require_session()
        if not self._hsm.supports(template.mechanism):
            raise errors.MechanismNotSupported(
                f"Token {self._hsm.name} cannot generate {template.algorithm.name} keys "
                f"({template.mechanism.name} is not offered).",
                "Choose another algorithm; the Token pane lists what this token supports.",
            )
        sent = self.for_token(template)
        return self._prove(sent, create_objects(session, sent))

    def for_token(self, template: KeyTemplate) -> KeyTemplate:
        """`template` as this token takes it (the attributes it rejects left out), or a refusal
        naming the capability when the key would not be what kmtui calls it."""
        profile = self._hsm.profile
        name = self._hsm.name
        if template.exportable and not profile.exportable_keys:
            why = (
                "rejects CKA_WRAP_WITH_TRUSTED"
                if "WRAP_WITH_TRUSTED" in profile.rejected
                else "wrapped a WRAP_WITH_TRUSTED key under an untrusted key when probed"
            )
            raise errors.MechanismNotSupported(
                f"Token {name} cannot keep an exportable key to trusted wrapping keys: it {why}. "
                f"Refused: exportable key {template.label!r}.",
                "Create it non-exportable; `kmtui token info` shows this token's profile.",
            )
        if Attribute.UNWRAP_TEMPLATE in template.secret and not profile.unwrap_template:
            raise errors.MechanismNotSupported(
                f"Token {name} ignores unwrap templates (its profile proved it): a "
                f"key-encryption key made there would unwrap keys in the clear. Refused: "
                f"key-encryption key {template.label!r}.",
                "Wrapping keys need a token that enforces CKA_UNWRAP_TEMPLATE; "
                "`kmtui token info` shows this token's profile.",
            )
        own = template.cka_id.startswith(SYSTEM_PREFIX)
        if (template.private or template.secret) and not (
            own or profile.guards_non_extractable or self._hsm.accept_wrappable_keys
        ):
            raise errors.MechanismNotSupported(
                f"Token {name} wraps keys marked non-extractable (its profile proved it): key "
                f"{template.label!r} would not be protected as kmtui says. Refused.",
                "Use a token that refuses (see `kmtui token info`), or, knowingly, set [token] "
                "accept_wrappable_keys = true in config.toml; kmtui then says so on every screen.",
            )
        return templates.without(template, profile.omit())

    def adopt(self, template: KeyTemplate) -> GeneratedKey:
        """Prove a key another session made (the security officer's trusted KEK, or a trusted
        recipient public key) as if ours."""
        cls = ObjectClass.PUBLIC_KEY if template.public else ObjectClass.SECRET_KEY

        def run() -> GeneratedKey:
            sent = templates.without(template, self._hsm.profile.omit())
            obj = self._hsm.objects.lookup(template.cka_id, cls)
            if obj is None:
                raise errors.ObjectGone(
                    f"The security officer's key {template.label!r} is not on the token.",
                    "Run the creation again.",
                )
            return self._prove(sent, {cls: obj})

        return self._hsm.run(run)

    def create_public(self, template: KeyTemplate) -> GeneratedKey:
        """A public key given by value (a recipient's, from PEM), created and proved."""

        def run() -> GeneratedKey:
            sent = templates.without(template, self._hsm.profile.omit())
            return self._prove(sent, create_objects(self._hsm.require_session(), sent))

        return self._hsm.run(run)

    def label_holder(self, template: dict[Attribute, Any]) -> Any:
        """A `templates.label_holder` key, made in the logged-in session (on the PKCS#11 thread)."""
        return self._hsm.require_session().generate_key(
            KeyType.GENERIC_SECRET,
            128,
            capabilities=0,
            mechanism=Mechanism.GENERIC_SECRET_KEY_GEN,
            template=self._hsm.profile.fit(template),
        )

    def create_from_value(self, value: bytes, template: KeyTemplate) -> str:
        """A key entered from components: created on the token, its KCV computed there."""

        sent = self.for_token(template)
        omit = self._hsm.profile.omit()

        def run() -> str:
            session = self._hsm.require_session()
            twin = {a: v for a, v in templates.kcv_probe(sent).items() if a not in omit}
            probe = session.create_object({**twin, Attribute.VALUE: value})
            try:
                kcv = aes_kcv(probe)
            finally:
                probe.destroy()
            key = session.create_object(templates.with_value(sent, value))
            self._hsm.objects.remember(template.cka_id, ObjectClass.SECRET_KEY, key)
            return kcv

        return self._hsm.run(run)

    def _prove(self, template: KeyTemplate, objects: dict[ObjectClass, Any]) -> GeneratedKey:
        """Read every attribute back in one call per object; refuse a key that differs."""
        spec = template.algorithm
        read_back: dict[str, dict[str, Any]] = {}
        differences: dict[str, tuple[object, object]] = {}
        extra = {
            ObjectClass.SECRET_KEY: [Attribute.CHECK_VALUE],
            ObjectClass.PUBLIC_KEY: PUBLIC_VALUE_ATTRS.get(spec.key_type, []),
            ObjectClass.PRIVATE_KEY: [],
        }
        values: dict[ObjectClass, dict[Attribute, Any]] = {}
        profile = self._hsm.profile
        for cls, obj in objects.items():
            self._hsm.objects.remember(template.cka_id, cls, obj)
            expected = template.expected(cls, local=profile.reports_local)
            if not profile.modulus_bits:  # not readable there: the modulus's length is checked
                expected.pop(Attribute.MODULUS_BITS, None)
            actual = self._hsm.objects.read_attributes(obj, list(expected) + extra[cls])
            values[cls] = actual
            read_back[cls.name] = {a.name: actual.get(a) for a in expected}
            for attr, want in expected.items():
                if actual.get(attr) != want:
                    differences[f"{cls.name}.{attr.name}"] = (want, actual.get(attr))
            if cls == ObjectClass.SECRET_KEY and Attribute.UNWRAP_TEMPLATE in template.secret:
                # An attribute array is never read back: its effect is observed instead.
                if self._hsm.wrapping.refused_in_clear(obj):
                    actual[Attribute.UNWRAP_TEMPLATE] = template.secret[Attribute.UNWRAP_TEMPLATE]
                else:
                    differences["SECRET_KEY.UNWRAP_TEMPLATE"] = (
                        "enforced",
                        "ignored: the token unwrapped a key in the clear",
                    )
            if problems := violations(cls, actual):
                differences[f"{cls.name}.invariants"] = ("none", "; ".join(problems))
            modulus = actual.get(Attribute.MODULUS)
            if cls == ObjectClass.PUBLIC_KEY and spec.key_type == KeyType.RSA and modulus:
                bits = int.from_bytes(bytes(modulus), "big").bit_length()
                if bits != spec.bits and template.private:  # a recipient's key has its own size
                    differences["PUBLIC_KEY.MODULUS"] = (f"{spec.bits} bits", f"{bits} bits")
        if differences:
            raise errors.TemplateMismatch(
                f"Token {self._hsm.name} created key {template.label!r} with attributes other than "
                f"requested ({', '.join(sorted(differences))}).",
                "Do not use this key: it is quarantined. Report the token model to the vendor.",
                differences,
            )
        if spec.symmetric:
            secret = values[ObjectClass.SECRET_KEY]
            check = secret.get(Attribute.CHECK_VALUE) or b""
            kcv = (
                bytes(check[:3]).hex().upper()
                if check
                else self._hsm.objects.kcv_of(objects[ObjectClass.SECRET_KEY])
            )
            return GeneratedKey(
                template.cka_id, (ObjectClass.SECRET_KEY.name,), kcv=kcv, attributes=read_back
            )
        public = values[ObjectClass.PUBLIC_KEY]
        return GeneratedKey(
            template.cka_id,
            tuple(cls.name for cls in objects),
            fingerprint=spki_fingerprint(spec.key_type, public),
            attributes=read_back,
        )
