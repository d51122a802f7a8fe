"""The token against the registry: every registered version on this token is there, unchanged
and the same key; every object kmtui did not make, or that only carries kmtui's name, is named."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pkcs11 import ObjectClass

from kmtui.core import errors
from kmtui.core.keys.findings import Finding, FindingKind, Report
from kmtui.core.models import GONE, Key, KeyVersion
from kmtui.core.registry.db import Store
from kmtui.core.token import templates
from kmtui.core.token.records import ObjectInfo
from kmtui.core.token.sealing import REGISTRY_KEY_ID, SEAL_KEY_ID, SEAL_MAC_KEY_ID
from kmtui.core.token.session import Hsm
from kmtui.core.token.signer import AUDIT_KEY_ID, HEAD_LABEL, PIN_KEY_ID, PIN_LABEL
from kmtui.core.token.templates import SYSTEM_PREFIX

SYSTEM_CLASSES: dict[bytes, frozenset[str]] = {
    SEAL_KEY_ID: frozenset({"SECRET_KEY"}),
    AUDIT_KEY_ID: frozenset({"PRIVATE_KEY", "PUBLIC_KEY"}),
    REGISTRY_KEY_ID: frozenset({"SECRET_KEY"}),
    SEAL_MAC_KEY_ID: frozenset({"SECRET_KEY"}),
    PIN_KEY_ID: frozenset({"SECRET_KEY"}),
}
"""The objects kmtui keeps under each of its own system ids (`kmtui:sys-*`)."""


class TokenComparison:
    """Reads the token's objects against the registry's versions on that token."""

    def __init__(self, store: Store, hsm: Hsm) -> None:
        self._store = store
        self._hsm = hsm

    def observed(self, algorithm: str, cka_id: bytes) -> str:
        if templates.ALGORITHMS[algorithm].symmetric:
            return self._hsm.objects.kcv(cka_id)
        return self._hsm.objects.fingerprint(cka_id)

    def compare(self, scanned: list[ObjectInfo], serial: str, report: Report) -> None:
        # Only this token's objects: versions registered on other tokens are not read at all.
        registered = {
            version.cka_id: (key, version) for key, version in self._store.keys.versions_on(serial)
        }
        impostors = [o for o in scanned if _kmtui_named(o) and not o.believable]
        for obj in impostors:
            report.findings.append(
                _impostor(
                    obj,
                    f"A public {obj.object_class or 'object'} that any token user can create "
                    f"without the PIN carries kmtui's {'label' if not obj.cka_id else 'CKA_ID'}",
                    _rank(obj, impostors),
                )
            )
        objects = by_id(believed(scanned))

        for cka_id, (key, version) in registered.items():
            present = objects.get(cka_id, [])
            strays = {id(o): why for o in present if (why := _stray(key, o))}
            for obj in present:
                if id(obj) in strays:
                    report.findings.append(
                        _impostor(
                            obj,
                            f"A {obj.object_class or 'object'} under this key's CKA_ID, "
                            f"{strays[id(obj)]}",
                            _rank(obj, [o for o in present if id(o) in strays]),
                        )
                    )
            own = [o for o in present if id(o) not in strays]
            if version.state in GONE or key.state in GONE:
                if own:
                    report.findings.append(
                        Finding(
                            FindingKind.UNKNOWN,
                            cka_id.hex(),
                            "The registry says this version was destroyed, yet it is on the token.",
                            key.id,
                            version.version,
                            key.label,
                        )
                    )
                continue
            if not own:
                report.findings.append(
                    Finding(
                        FindingKind.MISSING,
                        cka_id.hex(),
                        "The registry holds this version but the token has no such object.",
                        key.id,
                        version.version,
                        key.label,
                    )
                )
                continue
            if _duplicates(own, report):
                continue
            report.matched += 1
            self._check_object(key, version, report)

        for cka_id, group in objects.items():
            if cka_id in registered:
                continue
            if cka_id.startswith(SYSTEM_PREFIX):
                self._system(cka_id, group, report)
                continue
            # Objects without a CKA_ID are unrelated to each other: one finding each.
            seen: dict[tuple[str, str], int] = {}
            for objs in [group] if cka_id else [[o] for o in group]:
                rank = seen.get((objs[0].object_class, objs[0].label), 0)
                seen[(objs[0].object_class, objs[0].label)] = rank + 1
                _unregistered(cka_id, objs, report, rank)

    def _system(self, cka_id: bytes, group: list[ObjectInfo], report: Report) -> None:
        """kmtui's own objects: only the classes it keeps there, one of each, and for the audit
        key only the public key its private key proves."""
        classes = SYSTEM_CLASSES.get(cka_id)
        unproven = self._hsm.signer.impostors() if cka_id == AUDIT_KEY_ID else set()
        strays = [
            o
            for o in group
            if (classes is not None and o.object_class not in classes) or o.handle in unproven
        ]
        for obj in strays:
            what = (
                "that the audit private key does not prove"
                if obj.handle in unproven
                else "a kind of object kmtui does not keep there"
            )
            report.findings.append(
                _impostor(
                    obj,
                    f"A {obj.object_class or 'object'} under kmtui's system CKA_ID, {what}",
                    _rank(obj, strays),
                )
            )
        _duplicates([o for o in group if o not in strays], report)

    def _check_object(self, key: Key, version: KeyVersion, report: Report) -> None:
        """Attributes still as created, and the same KCV or fingerprint as registered."""
        spec = templates.ALGORITHMS.get(key.algorithm)
        if spec is None:
            return
        if "recipient" in key.tags:  # a recipient's public key: no private half on this token
            cls = ObjectClass.PUBLIC_KEY
            wanted = templates.recipient_flags(trusted="trusted" in key.tags)
        else:
            template = templates.build(
                key.algorithm,
                key.purpose,
                cka_id=version.cka_id,
                label=key.label or "?",
                exportable=key.exportable,
                trusted="trusted" in key.tags,
            )
            cls = templates.object_class(key.algorithm, key.tags)
            wanted = template.expected(cls)
        try:
            actual = self._hsm.objects.attributes(version.cka_id, cls)
            observed = self.observed(key.algorithm, version.cka_id)
            kek = spec.symmetric and key.purpose == templates.Purpose.WRAP
            clear = kek and not self._hsm.wrapping.refuses_clear_unwrap(version.cka_id)
        except errors.DuplicateObject:
            return  # reported above, as a duplicate or an impostor
        except errors.ObjectGone:
            report.findings.append(
                Finding(
                    FindingKind.MISSING,
                    version.cka_id.hex(),
                    "The object vanished during the check.",
                    key.id,
                    version.version,
                    key.label,
                )
            )
            return
        except errors.HsmError as exc:
            report.findings.append(
                Finding(
                    FindingKind.DRIFT,
                    version.cka_id.hex(),
                    f"Could not read the object: {exc.message}",
                    key.id,
                    version.version,
                    key.label,
                )
            )
            return
        watched = (
            "SENSITIVE",
            "EXTRACTABLE",
            "WRAP_WITH_TRUSTED",
            "ENCRYPT",
            "DECRYPT",
            "WRAP",
            "UNWRAP",
            "SIGN",
            "VERIFY",
            "DERIVE",
            "TRUSTED",
            "ALWAYS_SENSITIVE",
            "NEVER_EXTRACTABLE",
        )
        expected = {a.name: v for a, v in wanted.items()}
        if {"imported", "components"} & set(key.tags):  # entered, not generated on this token
            for name in ("ALWAYS_SENSITIVE", "NEVER_EXTRACTABLE"):
                expected.pop(name, None)
        drift = [
            f"{name} is {actual.get(name)!r}, expected {expected[name]!r}"
            for name in watched
            if name in expected and actual.get(name) != expected[name]
        ]
        if clear:
            drift.append(
                "this key-encryption key hands a key it unwraps back in the clear (the token "
                "holds it to no unwrap template: it was made before kmtui set one), so anyone "
                "with the PIN, and for a trusted KEK anyone with a file exported under it and no "
                "PIN, can read the keys wrapped under it. Nothing is exported under it any more: "
                "make a new KEK, move what depends on this one, then retire it"
            )
        if drift:
            report.findings.append(
                Finding(
                    FindingKind.DRIFT,
                    version.cka_id.hex(),
                    "; ".join(drift),
                    key.id,
                    version.version,
                    key.label,
                )
            )
        registered = version.kcv or version.fingerprint
        if registered and observed != registered:
            report.findings.append(
                Finding(
                    FindingKind.MISMATCH,
                    version.cka_id.hex(),
                    f"The token's key has check value {observed[:23]}, the registry "
                    f"{registered[:23]}: the key was substituted. Do not use it.",
                    key.id,
                    version.version,
                    key.label,
                )
            )


def holds_key(
    objects: dict[bytes, list[ObjectInfo]],
    cka_id: bytes,
    algorithm: str,
    tags: Sequence[str] = (),
) -> bool:
    """The token holds the object that is the key (a secret or private key, which no one plants
    without the PIN), not just some object under its CKA_ID."""
    wanted = templates.object_class(algorithm, tags).name
    return any(o.object_class == wanted for o in objects.get(cka_id, []))


def _kmtui_named(obj: ObjectInfo) -> bool:
    """Carries a name only kmtui gives: a `kmtui:` CKA_ID, an audit head's label or the pin's."""
    if obj.cka_id.startswith(b"kmtui:"):
        return True
    label = obj.label
    return obj.object_class == "DATA" and (label.startswith(HEAD_LABEL + ":") or label == PIN_LABEL)


def believed(scanned: Iterable[ObjectInfo]) -> list[ObjectInfo]:
    """Everything but impostors: kmtui-named objects only when believable, and foreign ones."""
    return [o for o in scanned if o.believable or not _kmtui_named(o)]


def _stray(key: Key, obj: ObjectInfo) -> str:
    """Why an object under a registered key's CKA_ID is not part of that key ('' when it is)."""
    if key.algorithm in templates.ALGORITHMS:
        cls = templates.object_class(key.algorithm, key.tags)
        classes = {cls.name} | ({"PUBLIC_KEY"} if cls == ObjectClass.PRIVATE_KEY else set())
        if obj.object_class not in classes:
            return "a kind of object the key does not have"
    if "trusted" in key.tags and not obj.trusted:
        return "not made by the security officer (the key is trusted, this object is not)"
    return ""


def _rank(obj: ObjectInfo, among: list[ObjectInfo]) -> int:
    """Its place among the objects under the same name, so each gets its own finding."""
    same = [o for o in among if (o.cka_id, o.label) == (obj.cka_id, obj.label)]
    return next(i for i, o in enumerate(same) if o is obj)


def _key_of(cka_id: bytes) -> tuple[str, int]:
    """The registry key a kmtui CKA_ID names; none for kmtui's own system objects."""
    parsed = None if cka_id.startswith(SYSTEM_PREFIX) else templates.parse_cka_id(cka_id)
    return parsed or ("", 0)


def _impostor(obj: ObjectInfo, what: str, rank: int) -> Finding:
    return Finding(
        FindingKind.IMPOSTOR,
        obj.cka_id.hex(),
        f"{what} (handle {obj.handle}): kmtui never uses it. Find out who made it and keep it "
        "for that investigation; then remove it.",
        *_key_of(obj.cka_id),
        obj.label,
        rank,
    )


def _duplicates(objs: list[ObjectInfo], report: Report) -> bool:
    """A finding for each class with more than one object kmtui could believe."""
    found = False
    for cls in sorted({o.object_class for o in objs}):
        same = [o for o in objs if o.object_class == cls]
        if len(same) < 2:
            continue
        found = True
        report.findings.append(
            Finding(
                FindingKind.DUPLICATE,
                same[0].cka_id.hex(),
                f"{len(same)} {cls} objects carry this CKA_ID (handles "
                f"{', '.join(str(o.handle) for o in same)}): kmtui will not guess which is its "
                "own and uses none of them. Someone made the extra one (with the PIN, unless it "
                "is a public key): investigate before removing it.",
                *_key_of(same[0].cka_id),
                same[0].label,
            )
        )
    return found


def by_id(objects: Iterable[ObjectInfo]) -> dict[bytes, list[ObjectInfo]]:
    grouped: dict[bytes, list[ObjectInfo]] = {}
    for obj in objects:
        grouped.setdefault(obj.cka_id, []).append(obj)
    return grouped


def _unregistered(cka_id: bytes, objs: list[ObjectInfo], report: Report, rank: int) -> None:
    label = objs[0].label
    if objs[0].object_class == "DATA" and (
        label.startswith(HEAD_LABEL + ":") or label == PIN_LABEL
    ):
        return  # an audit head kept on the token (this registry's or another's), or the pin
    classes = ", ".join(sorted(o.object_class or "?" for o in objs))
    if templates.parse_cka_id(cka_id) is not None:
        report.findings.append(
            Finding(
                FindingKind.UNKNOWN,
                cka_id.hex(),
                f"A kmtui-style object ({classes}) the registry does not know: substituted, or "
                "left by an operation outside this workstation. Never destroyed automatically.",
                label=label,
            )
        )
    else:
        report.findings.append(
            Finding(
                FindingKind.FOREIGN,
                cka_id.hex(),
                f"An object kmtui did not create ({classes}, handle {objs[0].handle}). "
                "Left untouched.",
                label=label,
                nth=rank,
            )
        )
