"""Keys held as components (split knowledge): XOR shares, each checked by its own KCV.

SoftHSM 2.6 offers no CKM_XOR_BASE_AND_DATA, so the shares are combined in this process's memory
for one C_CreateObject and dropped; the KCV is then computed on the token.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from kmtui.core import errors
from kmtui.core.control import policy
from kmtui.core.control.gate import Apply, Prepared
from kmtui.core.control.operations import ApprovalInput, Operation, OpKind
from kmtui.core.keys.keyfiles import write_new
from kmtui.core.keys.work import KeyWork
from kmtui.core.models import Key, new_key_id
from kmtui.core.registry.seals import subject
from kmtui.core.safetext import clean
from kmtui.core.token import templates

MAX_COMPONENTS = 9


def kcv_of(value: bytes) -> str:
    """The standard AES KCV: first 3 bytes of AES-ECB(value, 16 zero bytes)."""
    encryptor = Cipher(algorithms.AES(value), modes.ECB()).encryptor()  # noqa: S305 - KCV only
    return (encryptor.update(bytes(16)) + encryptor.finalize())[:3].hex().upper()


def xor(parts: Sequence[bytes]) -> bytes:
    out = bytearray(len(parts[0]))
    for part in parts:
        for i, byte in enumerate(part):
            out[i] ^= byte
    return bytes(out)


@dataclass(frozen=True)
class Component:
    custodian: str
    value: bytes = b""
    kcv: str = ""

    def __repr__(self) -> str:  # a component must never reach a log or a traceback
        return f"Component(custodian={self.custodian!r}, kcv={self.kcv!r}, value=<hidden>)"


def parse_component(text: str, size: int) -> bytes:
    """Hex as custodians type it (spaces and dashes allowed); the length must be exact."""
    cleaned = "".join(ch for ch in text if ch not in " -\t")
    try:
        value = bytes.fromhex(cleaned)
    except ValueError:
        raise errors.UsageError(
            "A component is hexadecimal digits (0-9, A-F), in groups if you like.",
            "Type it again from the form.",
        ) from None
    if len(value) != size:
        raise errors.UsageError(
            f"The component has {len(value)} bytes; this key needs {size}.",
            "A digit group is missing or doubled: type it again.",
        )
    return value


def size_of(algorithm: str) -> int:
    return templates.algorithm(algorithm).bits // 8


def grouped(value: bytes) -> str:
    """Hex in groups of four, as printed on a component form."""
    text = value.hex().upper()
    return " ".join(text[i : i + 4] for i in range(0, len(text), 4))


def write_component(path: Path, share: Component) -> None:
    """One custodian's component form (owner-only file, never overwriting one)."""
    write_new(
        path, f"custodian {share.custodian}\ncomponent {grouped(share.value)}\nkcv {share.kcv}\n"
    )


def read_component(path: Path, size: int) -> tuple[bytes, str]:
    try:
        lines = dict(
            line.split(" ", 1)
            for line in path.read_text(encoding="ascii").splitlines()
            if " " in line
        )
    except (OSError, UnicodeDecodeError):
        raise errors.UsageError(f"Cannot read the component form {path}.") from None
    if "component" not in lines or "kcv" not in lines:
        raise errors.UsageError(f"{path} lacks a component or kcv line.")
    return parse_component(lines["component"], size), lines["kcv"].strip()


def check_component(value: bytes, typed_kcv: str, entered: Sequence[bytes], number: int) -> str:
    """Each component's own KCV catches a typo at that component, not at the end."""
    kcv = kcv_of(value)
    if typed_kcv.strip().upper() != kcv:
        raise errors.UsageError(
            f"Component {number} does not match its KCV "
            f"(computed {kcv}, form says {clean(typed_kcv, 12)}).",
            f"Custodian {number}: type component {number} again.",
        )
    if value in entered:
        raise errors.UsageError(
            f"Component {number} is the same as an earlier component.",
            "Each custodian enters their own, different component.",
        )
    return kcv


class ComponentKeys(KeyWork):
    """Keys generated as, or entered from, components: prepared for approval, run through the
    gate."""

    def enter(
        self,
        typed: str,
        typed_kcv: str,
        entered: Sequence[Component],
        custodian: str,
        size: int,
        *,
        actor: str = "console",
    ) -> Component:
        """One custodian's component, checked against its own KCV; a refusal is audited (who,
        which component and why — never the component)."""
        number = len(entered) + 1
        try:
            value = parse_component(typed, size)
            kcv = check_component(value, typed_kcv, [c.value for c in entered], number)
        except errors.KmtuiError as exc:
            self._gate.refused_early(
                "key.components", exc, actor, custodian=custodian, component=number
            )
            raise
        return Component(custodian, value, kcv)

    def prepare(
        self,
        *,
        label: str,
        algorithm: str,
        purpose: str,
        custodians: Sequence[str],
        policy_name: str = "default",
        generate: bool = True,
        expected_kcv: str = "",
    ) -> Prepared:
        """Generate a key as XOR components, or enter one from them (`generate=False`)."""
        rules = self._policies.rules(policy_name)
        names = list(custodians)
        if len(names) < rules.min_components:
            raise errors.PolicyRefused(
                f"Policy {policy_name!r} needs at least {rules.min_components} components.",
                "Name one custodian per component.",
            )
        if len(set(names)) != len(names) or len(names) > MAX_COMPONENTS:
            raise errors.UsageError("Each component needs its own custodian (2 to 9, no repeats).")
        key_id = new_key_id()
        template = templates.build(
            algorithm, purpose, cka_id=templates.cka_id(key_id, 1), label=label
        )
        if not template.algorithm.symmetric or template.algorithm.key_type.name != "AES":
            raise errors.UsageError("Components are for AES keys.")
        policy.check_create(
            rules, policy_name, template.algorithm.name, template.purpose.value, False
        )
        kind = OpKind.KEY_CREATE if generate else OpKind.KEY_IMPORT
        op = Operation(
            kind,
            key_id,
            {
                "label": label,
                "algorithm": template.algorithm.name,
                "purpose": template.purpose.value,
                "policy": policy_name,
                "exportable": False,
                "cka_id": template.cka_id.hex(),
                "components": len(names),
                "custodians": names,
                "expected_kcv": expected_kcv.strip().upper(),
            },
        )
        verb = "Generate" if generate else "Enter"
        warning = " (only 2 components: weaker split knowledge)" if len(names) == 2 else ""
        summary = (
            f"{verb} {template.algorithm.name} key {clean(label, 60)!r} as {len(names)} "
            f"components held by {', '.join(names)}{warning}"
        )
        depends = (subject("policy", policy_name),)
        return self._gate.prepared(
            op, summary, rules, subject=subject("key", key_id), depends=depends
        )

    def run(
        self,
        prepared: Prepared,
        approvals: Sequence[ApprovalInput],
        components: Sequence[Component] | None = None,
        *,
        actor: str = "console",
    ) -> tuple[Key, list[Component]]:
        """Create the key on the token from components (generated here when none are given)."""
        op = prepared.operation
        p = op.params
        template = templates.build(
            str(p["algorithm"]),
            str(p["purpose"]),
            cka_id=bytes.fromhex(str(p["cka_id"])),
            label=str(p["label"]),
        )
        size = template.algorithm.bits // 8
        names = [str(n) for n in p["custodians"]]
        if components is None:
            values = [secrets.token_bytes(size) for _ in names]
            shares = [Component(n, v, kcv_of(v)) for n, v in zip(names, values, strict=True)]
        else:
            shares = list(components)
            if [c.custodian for c in shares] != names:
                raise errors.UsageError("The components do not come from the custodians named.")

        def work(facts: dict[str, Any]) -> Apply:
            whole = xor([c.value for c in shares])
            expected = kcv_of(whole)
            observed = self._hsm.keygen.create_from_value(whole, template)
            del whole
            facts.update(kcv=observed, custodians=names, component_checks=[c.kcv for c in shares])
            if observed != expected or (p["expected_kcv"] and observed != p["expected_kcv"]):
                self._hsm.objects.destroy(template.cka_id)
                raise errors.PolicyRefused(
                    f"The combined key's KCV is {observed}, expected "
                    f"{p['expected_kcv'] or expected}: a component was mistyped.",
                    "Nothing was registered; enter the components again.",
                )
            return self._records.registered(op, self._hsm.serial, observed, "components")

        self._gate.execute(
            prepared, approvals, work, rules=self._policies.rules(str(p["policy"])), actor=actor
        )
        return self._queries.get(op.key_id), shares if components is None else []
