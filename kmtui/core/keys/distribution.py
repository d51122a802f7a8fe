"""Keys that travel, through the gate: export under a key-encryption key or a recipient's RSA
public key, import from a wrapped file, recipients' public keys, and keys held as components.

All of it runs through the gate (dual control, intent and outcome audited). Wrapped files carry a
manifest (key id, version, algorithm, KCV, wrapping key, mechanism) so the receiving side can check
what it unwrapped. Components (split knowledge) are XOR shares: no custodian sees the whole key.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kmtui.core import errors
from kmtui.core.control import lifecycle, policy
from kmtui.core.control.gate import Apply, Executed, Prepared
from kmtui.core.control.lifecycle import Use
from kmtui.core.control.operations import ApprovalInput, Operation, OpKind
from kmtui.core.control.pin import Credential, audit_params, pin_or_protected
from kmtui.core.keys.keyfiles import (
    FILE_FORMAT,
    MECHANISMS,
    RSA_OAEP,
    WRAP_MECHANISMS,
    RawBlob,
    RecipientKey,
    WrappedFile,
    read_raw,
    read_recipient_pem,
    read_wrapped,
    write_new,
)
from kmtui.core.keys.work import KeyWork
from kmtui.core.models import GONE, Key, KeyState, KeyVersion, iso, new_key_id, utcnow
from kmtui.core.registry.seals import subject
from kmtui.core.safetext import clean
from kmtui.core.token import officer, templates
from kmtui.core.token.wrapping import unwraps_in_clear


class Distribution(KeyWork):
    """Export, import, recipients and components: prepared for approval, run through the gate."""

    def _kek(self, ref: str) -> Key:
        kek = self._queries.get(ref)
        if kek.purpose != "wrap" or not templates.ALGORITHMS[kek.algorithm].symmetric:
            raise errors.UsageError(
                f"{clean(kek.label, 60)!r} is not an AES key-encryption key.",
                "Name a key created with --purpose wrap.",
            )
        lifecycle.require_use(kek.state, Use.WRAP if kek.state == KeyState.ACTIVE else Use.UNWRAP)
        return kek

    def prepare_export(self, ref: str, kek_ref: str) -> Prepared:
        key = self._queries.get(ref)
        wrapper = self._queries.get(kek_ref)
        kek = _recipient(wrapper) if "recipient" in wrapper.tags else self._kek(ref=kek_ref)
        if not key.exportable:
            raise errors.PolicyRefused(
                f"Key {clean(key.label, 60)!r} is not exportable: policy {key.policy!r} made it "
                "non-extractable on the token, so no one can take it out, by design.",
                "Keys that must travel are created under an exportable policy "
                "(e.g. exportable-dek).",
            )
        if lifecycle.ALLOWED_USES[key.state].isdisjoint({Use.ENCRYPT, Use.DECRYPT}):
            raise errors.PolicyRefused(f"A key in state {key.state} is not exported.")
        recipient = "recipient" in kek.tags
        if "trusted" not in kek.tags:
            if recipient:
                raise errors.PolicyRefused(
                    f"{clean(kek.label, 60)!r} is not a trusted recipient key: exportable keys are "
                    "WRAP_WITH_TRUSTED, so the token wraps them only under a trusted wrapping key.",
                    "The security officer imports the recipient's key with "
                    "`kmtui keys import-public --trusted` after checking its fingerprint.",
                )
            raise errors.PolicyRefused(
                f"{clean(kek.label, 60)!r} is not a trusted key-encryption key.",
                "Exportable keys are wrapped only under a KEK the security officer created "
                "(`kmtui keys create --purpose wrap --trusted`).",
            )
        current, kek_version = _current(key), _current(kek)
        if not recipient and not self._hsm.wrapping.refuses_clear_unwrap(kek_version.cka_id):
            raise unwraps_in_clear(repr(clean(kek.label, 60)))
        params: dict[str, Any] = {
            "label": key.label,
            "version": current.version,
            "algorithm": key.algorithm,
            "kcv": current.kcv,
            "wrapping_key": kek.id,
        }
        if recipient:
            params.update(wrapping_key_fingerprint=kek_version.fingerprint, mechanism=RSA_OAEP)
            under = f"{clean(kek.label, 60)!r} (RSA-OAEP, {kek_version.fingerprint[:23]})"
        else:
            params.update(wrapping_key_kcv=kek_version.kcv, mechanism="aes-key-wrap-pad")
            under = f"{clean(kek.label, 60)!r} (KCV {kek_version.kcv})"
        op = Operation(OpKind.KEY_EXPORT, key.id, params)
        summary = f"Export key {clean(key.label, 60)!r} (KCV {current.kcv}) wrapped under {under}"
        depends = (subject("key", key.id), subject("key", kek.id), subject("policy", key.policy))
        rules = self._policies.rules(key.policy)
        return self._gate.prepared(op, summary, rules, key=key, depends=depends)

    def run_export(
        self,
        prepared: Prepared,
        approvals: Sequence[ApprovalInput],
        out: Path,
        *,
        actor: str = "console",
    ) -> Executed:
        """Wrap on the token and write the file (owner-only, never overwriting one)."""
        p = prepared.operation.params
        key = self._queries.get(prepared.operation.key_id)
        kek = self._queries.get(str(p["wrapping_key"]))

        mechanism, param = WRAP_MECHANISMS[str(p["mechanism"])]
        # The manifest names the wrapping key by what identifies it: a KEK's KCV, a public key's
        # fingerprint (SHA-256 of its SubjectPublicKeyInfo).
        named = {k: p[k] for k in ("wrapping_key_kcv", "wrapping_key_fingerprint") if k in p}

        def work(facts: dict[str, Any]) -> Apply:
            blob = self._hsm.wrapping.wrap(
                _current(key).cka_id, _current(kek).cka_id, mechanism, param
            )
            manifest = {
                "key_id": key.id,
                "version": p["version"],
                "label": key.label,
                "algorithm": key.algorithm,
                "purpose": key.purpose,
                "kcv": p["kcv"],
                "wrapping_key_id": kek.id,
                **named,
                "mechanism": p["mechanism"],
                "exported_at": iso(utcnow()),
            }
            document = {
                "format": FILE_FORMAT,
                "manifest": manifest,
                "wrapped": base64.b64encode(blob).decode("ascii"),
            }
            write_new(out, json.dumps(document, indent=2, sort_keys=True) + "\n")
            facts.update(file=str(out), blob_sha256=hashlib.sha256(blob).hexdigest())
            return lambda: self._store.keys.link(key.id, kek.id, "wrapped-by")

        return self._gate.execute(
            prepared, approvals, work, rules=self._policies.rules(key.policy), actor=actor
        )

    def prepare_import(
        self,
        wrapped: WrappedFile,
        kek_ref: str,
        *,
        label: str,
        policy_name: str = "default",
        kcv: str = "",
    ) -> Prepared:
        kek = self._kek(kek_ref)
        manifest = wrapped.manifest
        typed = kcv.strip().upper()
        if typed and typed != str(manifest["kcv"]).upper():
            raise errors.PolicyRefused(
                f"The KCV typed ({clean(typed, 12)}) differs from the file's manifest "
                f"({clean(manifest['kcv'], 12)}).",
                "Check the paper form; nothing was imported.",
            )
        key_id = new_key_id()
        template = templates.build(
            str(manifest["algorithm"]),
            str(manifest["purpose"]),
            cka_id=templates.cka_id(key_id, 1),
            label=label,
        )
        rules = self._policies.rules(policy_name)
        policy.check_create(
            rules, policy_name, template.algorithm.name, template.purpose.value, False
        )
        op = Operation(
            OpKind.KEY_IMPORT,
            key_id,
            {
                "label": label,
                "algorithm": template.algorithm.name,
                "purpose": template.purpose.value,
                "policy": policy_name,
                "exportable": False,
                "cka_id": template.cka_id.hex(),
                "expected_kcv": str(manifest["kcv"]).upper(),
                "unwrapping_key": kek.id,
                "mechanism": manifest["mechanism"],
                "source_key_id": str(manifest.get("key_id", "")),
                "blob_sha256": hashlib.sha256(wrapped.blob).hexdigest(),
            },
        )
        summary = (
            f"Import {template.algorithm.name} key as {clean(label, 60)!r} (expected KCV "
            f"{op.params['expected_kcv']}) unwrapped by {clean(kek.label, 60)!r}"
        )
        depends = (subject("key", kek.id), subject("policy", policy_name))
        return self._gate.prepared(
            op, summary, rules, subject=subject("key", key_id), depends=depends
        )

    def run_import(
        self,
        prepared: Prepared,
        wrapped: WrappedFile,
        approvals: Sequence[ApprovalInput],
        *,
        actor: str = "console",
    ) -> Key:
        """Check the KCV on a session twin first; only a matching key lands on the token."""
        op = prepared.operation
        p = op.params
        kek = self._queries.get(str(p["unwrapping_key"]))
        template = templates.build(
            str(p["algorithm"]),
            str(p["purpose"]),
            cka_id=bytes.fromhex(str(p["cka_id"])),
            label=str(p["label"]),
        )
        mechanism = MECHANISMS[str(p["mechanism"])]

        def work(facts: dict[str, Any]) -> Apply:
            observed = self._hsm.wrapping.kcv_of_blob(
                _current(kek).cka_id, wrapped.blob, mechanism, template
            )
            facts["kcv"] = observed
            if observed != p["expected_kcv"]:
                raise errors.PolicyRefused(
                    f"KCV mismatch: the token computed {observed}, the manifest says "
                    f"{p['expected_kcv']}. Wrong key-encryption key, or a substituted file.",
                    "Nothing was registered.",
                )
            self._hsm.wrapping.unwrap(_current(kek).cka_id, wrapped.blob, mechanism, template)
            return self._records.registered(
                op, self._hsm.serial, observed, "imported", links=[(kek.id, "wrapped-by")]
            )

        self._gate.execute(
            prepared, approvals, work, rules=self._policies.rules(str(p["policy"])), actor=actor
        )
        return self._queries.get(op.key_id)

    def load_wrapped(
        self, path: Path, *, raw: RawBlob | None = None, actor: str = "console"
    ) -> WrappedFile:
        """`read_wrapped` (or `read_raw`), with a refused file audited."""
        try:
            return read_raw(path, raw) if raw is not None else read_wrapped(path)
        except errors.KmtuiError as exc:
            self._gate.refused_early(str(OpKind.KEY_IMPORT), exc, actor, file=path.name)
            raise

    def prepare_import_public(
        self,
        recipient: RecipientKey,
        *,
        label: str,
        trusted: bool = False,
        policy_name: str = "default",
    ) -> Prepared:
        """Register a recipient's RSA public key (dual-controlled). The policy's algorithm list
        governs keys generated here; a recipient's key is bounded by `templates.recipient` (RSA of
        2048, 3072 or 4096 bits, wrap only) and by the policy's approvals and lifecycle."""
        key_id = new_key_id()
        template = templates.recipient(
            recipient.modulus,
            recipient.exponent,
            cka_id=templates.cka_id(key_id, 1),
            label=label,
            trusted=trusted,
        )
        rules = self._policies.rules(policy_name)
        for other in self._store.keys.with_fingerprint(recipient.fingerprint):
            if other.state not in GONE:
                raise errors.UsageError(
                    f"This public key is already registered as {clean(other.label, 60)!r} "
                    f"({other.id}).",
                    "Use that key, or destroy it first to register the key again.",
                )
        op = Operation(
            OpKind.KEY_IMPORT,
            key_id,
            {
                "label": label,
                "algorithm": template.algorithm.name,
                "purpose": template.purpose.value,
                "policy": policy_name,
                "exportable": False,
                "trusted": trusted,
                "recipient": True,
                "cka_id": template.cka_id.hex(),
                "fingerprint": recipient.fingerprint,
            },
        )
        summary = (
            f"Import recipient public key {clean(label, 60)!r} ({template.algorithm.name}, "
            f"{recipient.fingerprint})"
            + (" as TRUSTED (security officer): it may wrap exportable keys" if trusted else "")
        )
        depends = (subject("policy", policy_name),)
        return self._gate.prepared(
            op, summary, rules, subject=subject("key", key_id), depends=depends
        )

    def run_import_public(
        self,
        prepared: Prepared,
        recipient: RecipientKey,
        approvals: Sequence[ApprovalInput],
        *,
        so_login: Credential | None = None,
        actor: str = "console",
    ) -> Key:
        """Create the PUBLIC_KEY object (by the security officer when trusted) and register it."""
        op = prepared.operation
        p = op.params
        if recipient.fingerprint != p["fingerprint"]:
            raise errors.UsageError("This is not the public key the operation was prepared for.")
        trusted = bool(p["trusted"])
        if trusted and so_login is None:
            raise errors.UsageError(
                "A trusted recipient key is imported by the security officer.",
                "Two SO custodians enter their SO PIN halves (--so-pin-halves-from for scripts).",
            )
        template = templates.recipient(
            recipient.modulus,
            recipient.exponent,
            cka_id=bytes.fromhex(str(p["cka_id"])),
            label=str(p["label"]),
            trusted=trusted,
        )

        def work(facts: dict[str, Any]) -> Apply:
            try:
                if so_login is not None and trusted:
                    facts.update(audit_params(so_login, "so_"))
                    officer.create_trusted_recipient(
                        self._hsm, pin_or_protected(so_login), template
                    )
                    made = self._hsm.keygen.adopt(template)
                else:
                    made = self._hsm.keygen.create_public(template)
                if made.fingerprint != p["fingerprint"]:
                    raise errors.TemplateMismatch(
                        f"The token holds a public key with fingerprint {made.fingerprint[:23]}, "
                        f"not {str(p['fingerprint'])[:23]}.",
                        "Nothing was registered.",
                        {"PUBLIC_KEY.fingerprint": (p["fingerprint"], made.fingerprint)},
                    )
            except errors.TemplateMismatch:
                self._hsm.objects.destroy(
                    template.cka_id
                )  # a public object: nothing secret is lost
                raise
            facts.update(fingerprint=made.fingerprint, trusted=trusted)
            more = ["trusted"] if trusted else []
            return self._records.registered(
                op,
                self._hsm.serial,
                "",
                "recipient",
                fingerprint=made.fingerprint,
                more_tags=more,
            )

        self._gate.execute(
            prepared, approvals, work, rules=self._policies.rules(str(p["policy"])), actor=actor
        )
        return self._queries.get(op.key_id)

    def load_recipient(self, path: Path, *, actor: str = "console") -> RecipientKey:
        """`read_recipient_pem`, with a refused file audited (which file, and why; no key value)."""
        try:
            return read_recipient_pem(path)
        except errors.KmtuiError as exc:
            self._gate.refused_early(str(OpKind.KEY_IMPORT), exc, actor, recipient_pem=path.name)
            raise


def _recipient(key: Key) -> Key:
    lifecycle.require_use(key.state, Use.WRAP)
    return key


def _current(key: Key) -> KeyVersion:
    current = key.current
    if current is None:
        raise errors.UsageError(f"Key {clean(key.label, 60)!r} has no current version.")
    return current
