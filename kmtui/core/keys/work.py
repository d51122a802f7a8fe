"""What every key service holds: the gate its runs pass, and what it reads and writes."""

from __future__ import annotations

from kmtui.core.audit.seals import Seals
from kmtui.core.control.gate import Gate
from kmtui.core.control.policies import PolicyBook
from kmtui.core.keys.queries import KeyQueries
from kmtui.core.keys.records import KeyRecords
from kmtui.core.registry.db import Store
from kmtui.core.token.session import Hsm


class KeyWork:
    """The parts a key service prepares and runs its operations with (one set, built once by
    the workstation)."""

    def __init__(
        self,
        gate: Gate,
        store: Store,
        hsm: Hsm,
        policies: PolicyBook,
        queries: KeyQueries,
        records: KeyRecords,
        seals: Seals,
    ) -> None:
        self._gate = gate
        self._store = store
        self._hsm = hsm
        self._policies = policies
        self._queries = queries
        self._records = records
        self._seals = seals
