"""Keys leaving and entering the token wrapped: the token enforces who may wrap what."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11

from kmtui.core import errors
from kmtui.core.token import keygen, templates
from kmtui.core.token.objects import aes_kcv
from kmtui.core.token.templates import KeyTemplate

if TYPE_CHECKING:
    from kmtui.core.token.session import Hsm


class Wrapping:
    """C_WrapKey and C_UnwrapKey for distribution, and the wrap probe a self-test uses."""

    def __init__(self, hsm: Hsm) -> None:
        self._hsm = hsm

    def wrap(self, target: bytes, wrapper: bytes, mechanism: Mechanism, param: Any = None) -> bytes:
        """The target key (secret) wrapped by the wrapping key (a KEK, or a recipient's public
        key with `param` its OAEP parameters); the token enforces the rules."""

        def run() -> bytes:
            key = self._hsm.objects.get(target, ObjectClass.SECRET_KEY)
            kek = self._wrapping_key(wrapper)
            if kek.object_class == ObjectClass.SECRET_KEY and not self.refused_in_clear(kek):
                raise unwraps_in_clear(f"with CKA_ID {wrapper.decode('ascii', 'replace')!r}")
            try:
                return bytes(kek.wrap_key(key, mechanism=mechanism, mechanism_param=param))
            except (p11.KeyUnextractable, p11.KeyNotWrappable):
                raise errors.PolicyRefused(
                    "The token refused to wrap this key with that wrapping key.",
                    "Exportable keys can only be wrapped by a trusted key-encryption key or "
                    "recipient key (made or imported with --trusted by the security officer).",
                ) from None

        return self._hsm.run(run)

    def unwrap(
        self, wrapper: bytes, blob: bytes, mechanism: Mechanism, template: KeyTemplate
    ) -> None:
        """Unwrap onto the token as `template` says (check `kcv_of_blob` first: unwrapped keys
        carry no CKA_CHECK_VALUE on SoftHSM, and a key-encryption key may not encrypt)."""

        def run() -> None:
            key = self._unwrap(
                wrapper, blob, mechanism, template, templates.unwrap_target(template)
            )
            self._hsm.objects.remember(template.cka_id, ObjectClass.SECRET_KEY, key)

        self._hsm.run(run)

    def kcv_of_blob(
        self, wrapper: bytes, blob: bytes, mechanism: Mechanism, template: KeyTemplate
    ) -> str:
        """The KCV of the key inside a wrapped blob, from a session twin destroyed right after."""

        def run() -> str:
            probe = self._unwrap(wrapper, blob, mechanism, template, templates.kcv_probe(template))
            try:
                return aes_kcv(probe)
            finally:
                probe.destroy()

        return self._hsm.run(run)

    def refuses_clear_unwrap(self, wrapper: bytes) -> bool:
        """Whether this key-encryption key refuses to hand a key it wrapped back in the clear."""
        return self._hsm.run(
            lambda: self.refused_in_clear(self._hsm.objects.get(wrapper, ObjectClass.SECRET_KEY))
        )

    def refused_in_clear(self, kek: Any) -> bool:
        """Wrap a throw-away session key under the KEK and ask for it back as the attacker would
        (`templates.clear_unwrap`): True when the token refuses, or the copy keeps its value
        unreadable (on the PKCS#11 thread). A KEK that cannot unwrap refuses trivially."""
        if not kek[Attribute.UNWRAP]:
            return True
        session = self._hsm.require_session()
        probe = keygen.session_probe(session, self._hsm.profile.fit)
        try:
            blob = kek.wrap_key(probe, mechanism=Mechanism.AES_KEY_WRAP)
        except p11.PKCS11Error:
            return False  # nothing to ask back: not proved
        finally:
            probe.destroy()
        try:
            copy = kek.unwrap_key(
                ObjectClass.SECRET_KEY,
                KeyType.AES,
                blob,
                mechanism=Mechanism.AES_KEY_WRAP,
                capabilities=0,
                template=self._hsm.profile.fit(templates.clear_unwrap()),
            )
        except p11.PKCS11Error:
            return True
        try:
            copy[Attribute.VALUE]
        except p11.PKCS11Error:
            return True
        finally:
            copy.destroy()
        return False

    def probe(self, session: Any, kek: Any) -> bool:
        """Wrap a throw-away session key with the KEK, unwrap it, compare the two KCVs (on the
        PKCS#11 thread)."""
        probe = keygen.session_probe(session, self._hsm.profile.fit)
        unwrapped = None
        try:
            blob = kek.wrap_key(probe, mechanism=Mechanism.AES_KEY_WRAP)
            unwrapped = kek.unwrap_key(
                ObjectClass.SECRET_KEY,
                KeyType.AES,
                blob,
                mechanism=Mechanism.AES_KEY_WRAP,
                capabilities=0,
                template=self._hsm.profile.fit(templates.unwrapped_probe()),
            )
            zero = bytes(16)
            return bytes(probe.encrypt(zero, mechanism=Mechanism.AES_ECB)) == bytes(
                unwrapped.encrypt(zero, mechanism=Mechanism.AES_ECB)
            )
        finally:
            probe.destroy()
            if unwrapped is not None:
                unwrapped.destroy()

    def _wrapping_key(self, wrapper: bytes) -> Any:
        objects = self._hsm.objects
        obj = objects.lookup(wrapper, ObjectClass.SECRET_KEY) or objects.lookup(
            wrapper, ObjectClass.PUBLIC_KEY
        )
        if obj is None:
            raise errors.ObjectGone(f"No wrapping key with CKA_ID {wrapper!r} on the token.")
        return obj

    def _unwrap(
        self,
        wrapper: bytes,
        blob: bytes,
        mechanism: Mechanism,
        template: KeyTemplate,
        attrs: dict[Attribute, Any],
    ) -> Any:
        """C_UnwrapKey under the KEK; any refusal means a damaged blob or the wrong KEK."""
        kek = self._hsm.objects.get(wrapper, ObjectClass.SECRET_KEY)
        try:
            return kek.unwrap_key(
                ObjectClass.SECRET_KEY,
                template.algorithm.key_type,
                blob,
                mechanism=mechanism,
                capabilities=0,
                template=self._hsm.profile.fit(attrs),
            )
        except p11.PKCS11Error:
            raise _bad_blob() from None


def unwraps_in_clear(name: str) -> errors.KmtuiError:
    """Why nothing is exported under a KEK that would unwrap keys in the clear."""
    return errors.PolicyRefused(
        f"The key-encryption key {name} would hand any key it wraps back in the clear: the token "
        "does not hold it to an unwrap template (it was made before kmtui set one). Anyone with "
        "the PIN, or, for a trusted KEK, which is a public object, anyone with the exported file "
        "and no PIN, could unwrap the file with SENSITIVE=false and read the key.",
        "Nothing was exported. The security officer makes a new trusted KEK (`kmtui keys create "
        "--purpose wrap --trusted`); export under it, then retire this one. Files already "
        "exported under this KEK can still be imported with it.",
    )


def _bad_blob() -> errors.KmtuiError:
    return errors.PolicyRefused(
        "The wrapped key could not be unwrapped: the file is damaged or truncated, or it was "
        "wrapped under another key-encryption key.",
        "Check the file and the KEK named in its manifest; nothing was registered.",
    )
