"""Keys leaving and entering the token wrapped: the token enforces who may wrap what."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11

from kmtui.core import errors
from kmtui.core.token import templates
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

    def probe(self, session: Any, kek: Any) -> bool:
        """Wrap a throw-away session key with the KEK, unwrap it, compare the two KCVs (on the
        PKCS#11 thread)."""
        probe = session.generate_key(
            KeyType.AES, 128, capabilities=0, template=templates.session_probe()
        )
        unwrapped = None
        try:
            blob = kek.wrap_key(probe, mechanism=Mechanism.AES_KEY_WRAP)
            unwrapped = kek.unwrap_key(
                ObjectClass.SECRET_KEY,
                KeyType.AES,
                blob,
                mechanism=Mechanism.AES_KEY_WRAP,
                capabilities=0,
                template=templates.unwrapped_probe(),
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
                template=attrs,
            )
        except p11.PKCS11Error:
            raise _bad_blob() from None


def _bad_blob() -> errors.KmtuiError:
    return errors.PolicyRefused(
        "The wrapped key could not be unwrapped: the file is damaged or truncated, or it was "
        "wrapped under another key-encryption key.",
        "Check the file and the KEK named in its manifest; nothing was registered.",
    )
