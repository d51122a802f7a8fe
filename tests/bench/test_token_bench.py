"""Per-operation cost of kmtui's token layer against raw python-pkcs11, in the same run.

Run with `make bench` (never in CI). kmtui's figure includes everything it adds: the hop to the
PKCS#11 thread, the duplicate-CKA_ID check, the explicit template and the read-back of every
attribute. Rounds alternate raw/kmtui so drift hits both alike; medians are compared.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import pkcs11
import pytest
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.util.ec import encode_named_curve_parameters

from kmtui.core.models import new_key_id
from kmtui.core.token import templates
from kmtui.core.token.session import Hsm, on_hsm_thread

pytestmark = pytest.mark.bench
ROUNDS = 60


def _median_us(fn: Callable[[], Any], samples: list[float]) -> None:
    start = time.perf_counter()
    fn()
    samples.append((time.perf_counter() - start) * 1e6)


def _compare(name: str, raw: Callable[[], Any], ours: Callable[[], Any]) -> dict[str, float]:
    raw_s: list[float] = []
    our_s: list[float] = []
    for _ in range(3):  # warm-up
        raw()
        ours()
    for _ in range(ROUNDS):
        _median_us(raw, raw_s)
        _median_us(ours, our_s)
    r, o = statistics.median(raw_s), statistics.median(our_s)
    row = {"op": name, "raw_us": round(r, 1), "kmtui_us": round(o, 1), "ratio": round(o / r, 3)}
    print("BENCH " + json.dumps(row))
    return row


def _raw_session(hsm: Hsm) -> Any:
    # The process is already logged in through `hsm`; this session shares that login.
    token = pkcs11.lib(hsm.module).get_token(token_label=hsm.token_label)
    return token.open(rw=True)


def test_bench_token_layer_against_raw_python_pkcs11(hsm: Hsm) -> None:
    raw = _raw_session(hsm)  # used only while the PKCS#11 thread is idle: calls never overlap

    def raw_aes() -> None:
        raw.generate_key(
            KeyType.AES,
            256,
            store=True,
            id=new_key_id().encode(),
            label="raw",
            capabilities=pkcs11.MechanismFlag.ENCRYPT | pkcs11.MechanismFlag.DECRYPT,
            template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False},
        )

    def ours(algorithm: str, purpose: str) -> Callable[[], Any]:
        def run() -> None:
            key_id = new_key_id()
            hsm.keygen.generate(
                templates.build(
                    algorithm, purpose, cka_id=templates.cka_id(key_id, 1), label="bench"
                )
            )

        return run

    params = encode_named_curve_parameters("secp256r1")

    def raw_ec() -> None:
        raw.generate_keypair(
            KeyType.EC,
            store=True,
            id=new_key_id().encode(),
            label="raw",
            mechanism=Mechanism.EC_KEY_PAIR_GEN,
            public_template={Attribute.EC_PARAMS: params},
        )

    fixed = templates.build(
        "AES-256", "encrypt", cka_id=templates.cka_id(new_key_id(), 1), label="kcv"
    )
    hsm.keygen.generate(fixed)
    raw_key = raw.get_key(id=fixed.cka_id, object_class=ObjectClass.SECRET_KEY)

    def raw_kcv() -> None:
        raw_key[Attribute.CHECK_VALUE]

    rows = [
        _compare("AES-256 keygen", raw_aes, ours("AES-256", "encrypt")),
        _compare("EC P-256 keygen", raw_ec, ours("EC-P256", "sign")),
        _compare("KCV", raw_kcv, lambda: hsm.objects.kcv(fixed.cka_id)),
        # What the one-PKCS#11-thread rule costs by itself: an empty call, direct vs via the thread.
        _compare("thread hop (no-op)", lambda: None, lambda: on_hsm_thread(lambda: None)),
    ]
    raw.close()
    assert all(r["raw_us"] > 0 and r["kmtui_us"] > 0 for r in rows)
