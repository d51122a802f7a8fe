"""Per-operation cost of kmtui's token layer against raw python-pkcs11, in the same run.

Run with `make bench` (never in CI). kmtui's figure includes everything it adds: the hop to the
PKCS#11 thread, the duplicate-CKA_ID check, the explicit template and the read-back of every
attribute. Rounds alternate raw/kmtui so drift hits both alike; medians are compared, and each
ratio must stay within its bound (the figures and their reasons are by the bounds below).
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
# The project's goal for key generation: at most 1.2x raw python-pkcs11, everything kmtui adds
# (explicit template, read-back of every attribute, the thread hop) included.
KEYGEN_BOUND = 1.2
# A KCV read measured ~1.6x: the attribute read is ~40 us, and the single PKCS#11 thread that
# every call goes through (SoftHSM crashes when two threads call it) adds a hop of ~20 us to it.
# 2.0 lets that hop cost as much as the read itself, no more.
KCV_BOUND = 2.0
# The hop on its own, against the cheapest real PKCS#11 call it wraps (one raw attribute read):
# the bound KCV_BOUND rests on. Against an empty call the ratio means nothing (0.1 us vs ~20 us).
HOP_BOUND = 1.0


def _median_us(fn: Callable[[], Any], samples: list[float]) -> None:
    start = time.perf_counter()
    fn()
    samples.append((time.perf_counter() - start) * 1e6)


def _compare(
    name: str, raw: Callable[[], Any], ours: Callable[[], Any], bound: float
) -> dict[str, Any]:
    raw_s: list[float] = []
    our_s: list[float] = []
    for _ in range(3):  # warm-up
        raw()
        ours()
    for _ in range(ROUNDS):
        _median_us(raw, raw_s)
        _median_us(ours, our_s)
    r, o = statistics.median(raw_s), statistics.median(our_s)
    row = {
        "op": name,
        "raw_us": round(r, 1),
        "kmtui_us": round(o, 1),
        "ratio": round(o / r, 3),
        "bound": bound,
        "within": o / r <= bound,
    }
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
        _compare("AES-256 keygen", raw_aes, ours("AES-256", "encrypt"), KEYGEN_BOUND),
        _compare("EC P-256 keygen", raw_ec, ours("EC-P256", "sign"), KEYGEN_BOUND),
        _compare("KCV", raw_kcv, lambda: hsm.objects.kcv(fixed.cka_id), KCV_BOUND),
        # What the one-PKCS#11-thread rule costs by itself: an empty call sent through the thread,
        # against one raw attribute read.
        _compare(
            "thread hop (no-op) vs a raw attribute read",
            raw_kcv,
            lambda: on_hsm_thread(lambda: None),
            HOP_BOUND,
        ),
    ]
    raw.close()
    over = [f"{r['op']}: {r['ratio']}x > {r['bound']}x" for r in rows if not r["within"]]
    assert not over, "; ".join(over)
