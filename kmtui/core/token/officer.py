"""What only the security officer may do: create a trusted key-encryption key, or import a
recipient's RSA public key as trusted.

CKA_TRUSTED can be set only in an SO session, and PKCS#11 login is per process (this process is
logged in as the user), so the SO works in a child process. The SO PIN (put together from its two
halves by the caller) reaches it on stdin, never in argv or the environment; None means the
token's protected authentication path (C_Login with a NULL PIN). The child makes the object from
kmtui's own template and exits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from pkcs11 import Attribute

from kmtui.core import errors
from kmtui.core.token import arrays, templates
from kmtui.core.token.keygen import create_objects
from kmtui.core.token.session import Hsm


def create_trusted_kek(hsm: Hsm, so_pin: str | None, template: templates.KeyTemplate) -> None:
    """Generate `template` (a trusted AES KEK) in an SO session of a child process."""
    _as_officer(
        hsm,
        so_pin,
        {
            "action": "kek",
            "algorithm": template.algorithm.name,
            "cka_id": template.cka_id.hex(),
            "label": template.label,
        },
    )


def create_trusted_recipient(hsm: Hsm, so_pin: str | None, template: templates.KeyTemplate) -> None:
    """Create `template` (a recipient's RSA public key, trusted) in an SO session of a child
    process; the child rebuilds the template from the public numbers with `templates.recipient`."""
    public = template.public
    _as_officer(
        hsm,
        so_pin,
        {
            "action": "recipient",
            "modulus": bytes(public[Attribute.MODULUS]).hex(),
            "exponent": bytes(public[Attribute.PUBLIC_EXPONENT]).hex(),
            "cka_id": template.cka_id.hex(),
            "label": template.label,
        },
    )


def _as_officer(hsm: Hsm, so_pin: str | None, request: dict[str, str]) -> None:
    """The SO's request to the child: the token as `hsm` names it, the SO PIN on stdin."""
    env = dict(os.environ)
    if hsm.softhsm2_conf:
        env["SOFTHSM2_CONF"] = hsm.softhsm2_conf
    proc = subprocess.run(
        [sys.executable, "-m", "kmtui.core.token.officer"],
        input=json.dumps(
            {
                "module": hsm.module,
                "token_label": hsm.token_label,
                "token_serial": hsm.token_serial,
                "so_pin": so_pin,
                **request,
            }
        ),
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        reason = proc.stdout.strip()[-300:] or "the security officer's session failed"
        raise (
            errors.PinIncorrect(reason, "Check the SO PIN halves; nothing was created.")
            if ("PinIncorrect" in reason)
            else errors.HsmError(reason, "Nothing was created.")
        )


def _child() -> None:
    import pkcs11
    from pkcs11 import exceptions as p11
    from pkcs11.attributes import AttributeMapper

    request = json.loads(sys.stdin.read())
    lib = pkcs11.lib(request["module"])
    query = (
        {"token_label": request["token_label"]}
        if request["token_label"]
        else {"token_serial": request["token_serial"].encode()}
    )
    cka_id, label = bytes.fromhex(request["cka_id"]), request["label"]
    if request.get("action") == "recipient":
        template = templates.recipient(
            int(request["modulus"], 16),
            int(request["exponent"], 16),
            cka_id=cka_id,
            label=label,
            trusted=True,
        )
    else:
        template = templates.build(
            request["algorithm"], "wrap", cka_id=cka_id, label=label, trusted=True
        )
    try:
        token = lib.get_token(**query)
        so_pin = request["so_pin"]
        mapper = arrays.register(AttributeMapper())
        with token.open(
            rw=True,
            so_pin=pkcs11.PROTECTED_AUTH if so_pin is None else so_pin,
            attribute_mapper=mapper,
        ) as session:
            create_objects(session, template)
    except p11.PKCS11Error as exc:
        print(f"The token refused the security officer's request ({type(exc).__name__}).")
        raise SystemExit(1) from None


if __name__ == "__main__":
    _child()
