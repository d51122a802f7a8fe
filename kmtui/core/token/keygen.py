"""Keys made on the token from kmtui's templates, each one proved by reading it back."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pkcs11 import Attribute, KeyType, ObjectClass

from kmtui.core import errors
from kmtui.core.token import templates
from kmtui.core.token.objects import PUBLIC_VALUE_ATTRS, aes_kcv, spki_fingerprint
from kmtui.core.token.records import GeneratedKey
from kmtui.core.token.templates import KeyTemplate, violations

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


def session_probe(session: Any) -> Any:
    """A throw-away AES-128 session key (never on the token: `templates.session_probe`) that
    proves what a key-encryption key does with a key it wraps; the caller destroys it."""
    return session.generate_key(
        KeyType.AES, 128, capabilities=0, template=templates.session_probe()
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
        return self._prove(template, create_objects(session, template))

    def adopt(self, template: KeyTemplate) -> GeneratedKey:
        """Prove a key another session made (the security officer's trusted KEK, or a trusted
        recipient public key) as if ours."""
        cls = ObjectClass.PUBLIC_KEY if template.public else ObjectClass.SECRET_KEY

        def run() -> GeneratedKey:
            obj = self._hsm.objects.lookup(template.cka_id, cls)
            if obj is None:
                raise errors.ObjectGone(
                    f"The security officer's key {template.label!r} is not on the token.",
                    "Run the creation again.",
                )
            return self._prove(template, {cls: obj})

        return self._hsm.run(run)

    def create_public(self, template: KeyTemplate) -> GeneratedKey:
        """A public key given by value (a recipient's, from PEM), created and proved."""

        def run() -> GeneratedKey:
            return self._prove(template, create_objects(self._hsm.require_session(), template))

        return self._hsm.run(run)

    def create_from_value(self, value: bytes, template: KeyTemplate) -> str:
        """A key entered from components: created on the token, its KCV computed there."""

        def run() -> str:
            session = self._hsm.require_session()
            probe = session.create_object({**templates.kcv_probe(template), Attribute.VALUE: value})
            try:
                kcv = aes_kcv(probe)
            finally:
                probe.destroy()
            key = session.create_object(templates.with_value(template, value))
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
        for cls, obj in objects.items():
            self._hsm.objects.remember(template.cka_id, cls, obj)
            expected = template.expected(cls)
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
