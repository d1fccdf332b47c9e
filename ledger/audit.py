"""The auditor's verification library: pure functions over bytes, no database, no network.

:func:`verify_log` takes a log's entries (bytes, in index order), its signed checkpoints, the
pinned note verifier keys and, optionally, what an earlier run kept (:class:`AuditState`), and
either returns an :class:`AuditReport` or raises an :class:`~ledger.errors.AuditError`:

- :class:`~ledger.errors.TamperingDetected` when a checkpoint's signature (C2SP signed-note) or
  origin (C2SP tlog-checkpoint) is wrong, when two checkpoints of one size differ (a fork), when
  a checkpoint covers entries the log does not have, or when the RFC 9162 §2.1.1 root recomputed
  from the entries differs from a checkpoint's. Every checkpoint kept from earlier runs is
  checked against the same recomputed tree, which is consistency with the newest checkpoint by
  recomputation; when an older checkpoint fails while the newest holds, the evidence carries
  the RFC 9162 §2.1.4 consistency proof that shows it.
- :class:`~ledger.errors.EconomyViolation` when replaying the entries breaks a rule: a malformed
  entry, an act priced by a catalogue version not logged before it, a withdrawal that takes a
  balance below zero or does not add up, a denomination used before it was announced or outside
  its window, a coin deposited twice, more coins of a denomination deposited than withdrawn,
  or balances (as the service reports them) that differ from the replay, or points credited
  not equal to balances plus points debited.

Every error carries self-contained evidence (``AuditError.to_json()``): signed checkpoint notes,
recomputed roots, the failing proof, the offending entries' indexes and bytes.

The tree is built in aligned chunks of 2**16 leaves with :func:`ledger.merkle.subtree_levels`,
keeping only the right edge above them, so memory stays small whatever the log's size; the
economy replay decodes acts (the bulk of a log) through one ``struct`` call.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import json
import multiprocessing
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from keys.note import NoteVerifier
from ledger.checkpoint import Checkpoint, TlogProof, open_checkpoint
from ledger.entries import (
    ACT_CREDITED_VIEW,
    ENCODING_VERSION,
    ActCredited,
    CatalogueChanged,
    DenominationAnnounced,
    Entry,
    Kind,
    decode_entry,
    describe_entry,
    scan_deposit,
    scan_withdrawal,
)
from ledger.errors import (
    CheckpointError,
    EconomyViolation,
    EntryError,
    ProofError,
    TamperingDetected,
)
from ledger.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    MemoryTree,
    leaf_hash,
    leaf_hashes,
    node_hash,
    subtree_levels,
    verify_consistency,
)

__all__ = [
    "MAX_FINGERPRINTS",
    "AuditReport",
    "AuditState",
    "EntryList",
    "EntrySource",
    "VerifiedReceipt",
    "verify_log",
    "verify_receipt",
]

MAX_FINGERPRINTS = 4096
"""The state keeps at most this many perfect subtrees of the verified tree (one level of it),
to point at the entries that changed when a later export no longer matches."""

STATE_FORMAT = "nicecard-ledger-audit-state v1"
MAX_KEPT_CHECKPOINTS = 1000
MAX_EVIDENCE_ENTRIES = 256
_CHUNK_LEVEL = 16
_CHUNK = 1 << _CHUNK_LEVEL


class EntrySource(Protocol):
    """Entries in index order, in chunks; iterable more than once (evidence needs a second
    look). Pickleable if ``verify_log`` runs with ``jobs=2``."""

    def chunks(self) -> Iterator[Sequence[bytes]]:
        """The entries' bytes, in index order, any number at a time."""
        ...


@dataclass(frozen=True)
class EntryList:
    """An :class:`EntrySource` over entries held in memory."""

    entries: Sequence[bytes]

    def chunks(self) -> Iterator[Sequence[bytes]]:
        """The entries, in chunks of 2**16."""
        for start in range(0, len(self.entries), _CHUNK):
            yield self.entries[start : start + _CHUNK]


# --- checkpoints ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Seen:
    note: bytes
    checkpoint: Checkpoint
    source: str  # "export" or "state"

    def evidence(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "size": self.checkpoint.size,
            "root": _b64(self.checkpoint.root_hash),
            "note": self.note.decode("utf-8"),
        }


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _open_all(
    notes: Iterable[bytes], verifiers: Sequence[NoteVerifier], origin: str, source: str
) -> list[_Seen]:
    seen = []
    for note in notes:
        try:
            checkpoint = open_checkpoint(note, verifiers, origin=origin)
        except CheckpointError as exc:
            raise TamperingDetected(
                "bad-checkpoint",
                f"a checkpoint ({source}) does not verify: {exc}",
                {"checkpoints": [{"source": source, "note": note.decode("utf-8", "replace")}]},
            ) from None
        seen.append(_Seen(note, checkpoint, source))
    return seen


def _check_forks(seen: Sequence[_Seen]) -> None:
    by_size: dict[int, _Seen] = {}
    for item in seen:
        other = by_size.setdefault(item.checkpoint.size, item)
        if not hmac.compare_digest(other.checkpoint.root_hash, item.checkpoint.root_hash):
            raise TamperingDetected(
                "fork",
                f"two signed checkpoints of size {item.checkpoint.size} have different roots",
                {"checkpoints": [other.evidence(), item.evidence()]},
            )


# --- the tree ---------------------------------------------------------------------------------


class _TreeBuilder:
    """RFC 9162 roots at the wanted sizes, from leaf hashes fed in order.

    Leaves are grouped in aligned chunks of 2**16; each chunk's perfect subtrees come from
    :func:`subtree_levels`, and only the perfect subtrees left of the current chunk (at most one
    per level) are kept: a root at size s folds those with the decomposition of s inside its
    chunk (RFC 9162 §2.1.1).
    """

    def __init__(self, sizes: Iterable[int], fingerprints: Mapping[int, int]) -> None:
        self._wanted = sorted({size for size in sizes if size > 0})
        self._next = 0
        self.roots: dict[int, bytes] = {0: EMPTY_ROOT}
        self._frontier: dict[int, bytes] = {}
        self._base = 0
        self._pending: list[bytes] = []
        # level -> how many perfect subtrees of that level to keep
        self._fingerprint_counts = dict(fingerprints)
        self.fingerprints: dict[int, list[bytes]] = {level: [] for level in fingerprints}

    def add(self, leaves: Sequence[bytes]) -> None:
        pending = self._pending
        pending.extend(leaves)
        if len(pending) < _CHUNK:
            return
        full = len(pending) - len(pending) % _CHUNK
        for start in range(0, full, _CHUNK):
            self._chunk(pending[start : start + _CHUNK])
        del pending[:full]

    def finish(self) -> tuple[int, bytes]:
        """The number of leaves and the root of the whole tree."""
        pending, self._pending = self._pending, []
        levels: list[list[bytes]] = [[]]
        if pending:  # fewer than 2**16 leaves after the last full chunk
            levels = self._chunk(pending)
        return self._base + len(pending), self._fold(levels, len(pending))

    def _chunk(self, leaves: list[bytes]) -> list[list[bytes]]:
        levels = subtree_levels(leaves)
        width = len(leaves)
        wanted = self._wanted
        while self._next < len(wanted) and wanted[self._next] <= self._base + width:
            size = wanted[self._next]
            self.roots[size] = self._fold(levels, size - self._base)
            self._next += 1
        for level, wanted_count in self._fingerprint_counts.items():
            kept = self.fingerprints[level]
            if level < len(levels) and len(kept) < wanted_count:
                kept.extend(levels[level][: wanted_count - len(kept)])
        if width == _CHUNK:
            node, level = levels[_CHUNK_LEVEL][0], _CHUNK_LEVEL
            while level in self._frontier:
                node = node_hash(self._frontier.pop(level), node)
                level += 1
            self._frontier[level] = node
            self._base += _CHUNK
        return levels

    def _fold(self, levels: Sequence[Sequence[bytes]], width: int) -> bytes:
        """Root of the kept subtrees followed by the first ``width`` leaves of this chunk."""
        nodes = [self._frontier[level] for level in sorted(self._frontier, reverse=True)]
        offset = 0
        for level in reversed(range(width.bit_length())):
            if width >> level & 1:
                nodes.append(levels[level][offset >> level])
                offset += 1 << level
        if not nodes:
            return EMPTY_ROOT
        root = nodes[-1]
        for node in reversed(nodes[:-1]):
            root = node_hash(node, root)
        return root


# --- the economy ------------------------------------------------------------------------------


@dataclass
class _Economy:
    """Replays the entries in order and records the first rule they break.

    Acts, withdrawals and deposits (nearly all of a log) are read with :mod:`ledger.entries`'
    bulk readers; anything else, or anything those refuse, goes through ``decode_entry``.
    """

    balances: dict[bytes, int] = field(default_factory=dict)
    credited: int = 0
    debited: int = 0
    deposited: int = 0
    count: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    catalogue: int = 0
    denominations: dict[bytes, tuple[int, int, int, int]] = field(default_factory=dict)
    withdrawn: dict[bytes, int] = field(default_factory=dict)
    deposited_coins: dict[bytes, int] = field(default_factory=dict)
    coins: set[bytes] = field(default_factory=set)
    act_fields: set[bytes] = field(default_factory=set)  # partner + act type values seen valid
    violation: dict[str, Any] | None = None

    def add(self, chunk: Iterable[bytes]) -> None:
        """Replay a chunk of entries (an act costs one ``struct`` call and a dict update)."""
        view = ACT_CREDITED_VIEW.unpack
        act_size = ACT_CREDITED_VIEW.size
        act_kind = Kind.ACT_CREDITED.value
        balances = self.balances
        act_fields = self.act_fields
        catalogue = self.catalogue
        index = self.count
        credited = 0
        acts = 0
        for data in chunk:
            if len(data) == act_size and data[1] == act_kind:
                version, pseudonym, points, used, fields = view(data)
                if (
                    version == ENCODING_VERSION
                    and points
                    and 0 < used <= catalogue
                    and fields in act_fields
                ):
                    balances[pseudonym] = balances.get(pseudonym, 0) + points
                    credited += points
                    acts += 1
                    index += 1
                    continue
            self._other(index, data)
            catalogue = self.catalogue
            index += 1
        self.count = index
        self.credited += credited
        self._count(Kind.ACT_CREDITED, acts)

    def _count(self, kind: Kind, n: int = 1) -> None:
        name = kind.name.lower()
        self.kinds[name] = self.kinds.get(name, 0) + n

    def _violate(self, rule: str, message: str, index: int, data: bytes) -> None:
        if self.violation is not None:
            return
        entry: dict[str, Any] = {
            "index": index,
            "data": _b64(data),
            "leaf_hash": _b64(leaf_hash(data)),
        }
        with contextlib.suppress(EntryError):
            entry["decoded"] = describe_entry(decode_entry(data))
        self.violation = {"rule": rule, "message": f"entry {index}: {message}", "entries": [entry]}

    def _other(self, index: int, data: bytes) -> None:
        kind = data[1] if len(data) > 1 else 0
        try:
            if kind == Kind.WITHDRAWAL_DEBITED:
                self._withdrawal(index, data, scan_withdrawal(data))
                return
            if kind == Kind.COINS_DEPOSITED:
                self._deposit(index, data, scan_deposit(data))
                return
            entry = decode_entry(data)
        except EntryError as exc:
            self._violate("malformed-entry", str(exc), index, data)
            return
        self._count(entry.kind)
        match entry.event:
            case ActCredited() as act:
                self._act(index, data, act)
            case DenominationAnnounced() as announced:
                if announced.denomination in self.denominations:
                    self._violate(
                        "denomination-reannounced", "denomination announced twice", index, data
                    )
                else:
                    self.denominations[announced.denomination] = (
                        announced.value,
                        announced.withdraw_from,
                        announced.withdraw_until,
                        announced.deposit_until,
                    )
            case CatalogueChanged() as changed:
                if changed.version != self.catalogue + 1:
                    self._violate(
                        "catalogue-version",
                        f"catalogue version {changed.version} follows {self.catalogue}",
                        index,
                        data,
                    )
                self.catalogue = max(self.catalogue, changed.version)
            case _:  # pragma: no cover - kinds 2 and 3 were read above
                raise AssertionError(entry.kind)

    def _act(self, index: int, data: bytes, act: ActCredited) -> None:
        """An act the fast path did not take: new partner or act type, or a broken rule."""
        self.act_fields.add(ACT_CREDITED_VIEW.unpack(data)[4])
        if not 0 < act.catalogue <= self.catalogue:
            self._violate(
                "unknown-catalogue",
                f"act priced by catalogue version {act.catalogue}, "
                f"logged versions are 1..{self.catalogue}",
                index,
                data,
            )
        pseudonym = bytes.fromhex(act.pseudonym)
        self.balances[pseudonym] = self.balances.get(pseudonym, 0) + act.points
        self.credited += act.points

    def _withdrawal(
        self, index: int, data: bytes, scanned: tuple[int, bytes, int, list[tuple[bytes, int]]]
    ) -> None:
        recorded_at, pseudonym, points, items = scanned
        self._count(Kind.WITHDRAWAL_DEBITED)
        total = 0
        for denomination, count in items:
            known = self.denominations.get(denomination)
            if known is None:
                self._violate(
                    "unknown-denomination", "withdrawal of an unannounced denomination", index, data
                )
                continue
            value, withdraw_from, withdraw_until, _ = known
            if not withdraw_from <= recorded_at < withdraw_until:
                self._violate(
                    "denomination-not-valid",
                    "withdrawal outside the denomination's validity window",
                    index,
                    data,
                )
            total += value * count
            self.withdrawn[denomination] = self.withdrawn.get(denomination, 0) + count
        if total != points:
            self._violate(
                "withdrawal-total", f"debits {points} points for coins worth {total}", index, data
            )
        balance = self.balances.get(pseudonym, 0) - points
        if balance < 0:
            self._violate("negative-balance", f"the balance would fall to {balance}", index, data)
        self.balances[pseudonym] = balance
        self.debited += points

    def _deposit(
        self, index: int, data: bytes, scanned: tuple[int, str, int, list[tuple[bytes, bytes]]]
    ) -> None:
        recorded_at, _, points, items = scanned
        self._count(Kind.COINS_DEPOSITED)
        total = 0
        for denomination, coin in items:
            known = self.denominations.get(denomination)
            if known is None:
                self._violate(
                    "unknown-denomination", "deposit of an unannounced denomination", index, data
                )
                continue
            total += known[0]
            if not known[1] <= recorded_at < known[3]:
                self._violate(
                    "denomination-not-valid",
                    "deposit outside the denomination's deposit window",
                    index,
                    data,
                )
            if coin in self.coins:
                self._violate("double-spend", "a coin deposited twice", index, data)
            self.coins.add(coin)
            spent = self.deposited_coins.get(denomination, 0) + 1
            self.deposited_coins[denomination] = spent
            if spent > self.withdrawn.get(denomination, 0):
                self._violate(
                    "overspent-denomination",
                    "more coins of a denomination deposited than withdrawn",
                    index,
                    data,
                )
        if total != points:
            self._violate(
                "deposit-total", f"deposits {points} points for coins worth {total}", index, data
            )
        self.deposited += points


def _replay_economy(source: EntrySource) -> _Economy:
    """The whole economy pass (what a worker process runs with ``jobs=2``)."""
    economy = _Economy()
    for chunk in source.chunks():
        economy.add(chunk)
    return economy


# --- state kept between runs ------------------------------------------------------------------


@dataclass(frozen=True)
class AuditState:
    """What the auditor keeps between runs (a JSON file).

    ``checkpoints``: signed notes seen (newest :data:`MAX_KEPT_CHECKPOINTS`); every later run
    checks each against the recomputed tree. ``fingerprints``: the perfect subtrees at
    ``fingerprint_level`` (at most :data:`MAX_FINGERPRINTS` of them) of
    the tree up to ``verified_size`` (the newest verified checkpoint), to point at the 256
    entries that changed when a later export no longer matches.
    """

    origin: str
    checkpoints: tuple[bytes, ...] = ()
    verified_size: int = 0
    fingerprint_level: int = 0
    fingerprints: tuple[bytes, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The state file's contents."""
        return {
            "format": STATE_FORMAT,
            "origin": self.origin,
            "verified_size": self.verified_size,
            "fingerprint_level": self.fingerprint_level,
            "fingerprints": _b64(b"".join(self.fingerprints)),
            "checkpoints": [note.decode("utf-8") for note in self.checkpoints],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AuditState:
        """Parse a state file's contents; raises ``ValueError`` if malformed."""
        try:
            if data["format"] != STATE_FORMAT:
                raise ValueError("unknown audit state format")
            level = data["fingerprint_level"]
            if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 63:
                raise ValueError("malformed fingerprint_level")
            blob = base64.b64decode(data["fingerprints"], validate=True)
            if len(blob) % HASH_SIZE:
                raise ValueError("malformed fingerprints")
            size = data["verified_size"]
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise ValueError("malformed verified_size")
            notes = tuple(str(note).encode("utf-8") for note in data["checkpoints"])
            return cls(
                origin=str(data["origin"]),
                checkpoints=notes,
                verified_size=size,
                fingerprint_level=level,
                fingerprints=tuple(blob[i : i + HASH_SIZE] for i in range(0, len(blob), HASH_SIZE)),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed audit state: {exc}") from None

    @classmethod
    def loads(cls, text: str) -> AuditState:
        """Parse a state file's text; raises ``ValueError`` if malformed."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("malformed audit state")
        return cls.from_json(data)


# --- the report -------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditReport:
    """What a successful verification found, and the state to keep for the next run."""

    origin: str
    entries: int
    root: bytes
    checkpoints: int
    newest_checkpoint_size: int
    kinds: Mapping[str, int]
    credited: int
    debited: int
    deposited: int
    balances_total: int
    pseudonyms: int
    withdrawn_coins: Mapping[str, int]
    deposited_coins: Mapping[str, int]
    state: AuditState

    @property
    def uncovered(self) -> int:
        """Entries no signed checkpoint covers yet (not yet authenticated)."""
        return self.entries - self.newest_checkpoint_size

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "status": "ok",
            "origin": self.origin,
            "entries": self.entries,
            "size": self.entries,
            "root": _b64(self.root),
            "checkpoints": self.checkpoints,
            "newest_checkpoint_size": self.newest_checkpoint_size,
            "uncovered_entries": self.uncovered,
            "kinds": dict(self.kinds),
            "points_credited": self.credited,
            "points_debited": self.debited,
            "points_deposited": self.deposited,
            "balances_total": self.balances_total,
            "pseudonyms": self.pseudonyms,
            "coins_withdrawn": dict(self.withdrawn_coins),
            "coins_deposited": dict(self.deposited_coins),
        }


# --- verification -----------------------------------------------------------------------------


def verify_log(
    source: EntrySource,
    checkpoints: Sequence[bytes],
    verifiers: Sequence[NoteVerifier],
    *,
    origin: str,
    tree_size: int | None = None,
    balances: Iterable[tuple[str, int]] | Callable[[], Iterable[tuple[str, int]]] | None = None,
    state: AuditState | None = None,
    progress: Callable[[int], None] | None = None,
    jobs: int = 1,
) -> AuditReport:
    """Verify a whole log; returns the report or raises an :class:`AuditError` with evidence.

    ``checkpoints`` are signed notes; ``tree_size`` is the size the log claims to have (an
    export's header); ``balances`` the balances the service reports at that size (or a callable
    giving them, read after the entries); ``state`` what an earlier run kept. ``progress`` is
    called with the number of entries processed so far. ``jobs=2`` replays the economy in a
    second process while this one rebuilds the tree. Malformed checkpoints in ``state`` raise
    :class:`~ledger.errors.CheckpointError` (the caller's input, not the log's fault).
    """
    if not verifiers:
        raise CheckpointError("at least one verifier key is needed")
    if state is not None and state.origin != origin:
        raise CheckpointError("the audit state is for another log origin")
    seen = _open_all(checkpoints, verifiers, origin, "export")
    kept: list[_Seen] = []
    if state is not None:
        try:
            kept = _open_all(state.checkpoints, verifiers, origin, "state")
        except TamperingDetected as exc:
            raise CheckpointError(f"the audit state does not verify: {exc.message}") from None
    every = [*kept, *seen]
    _check_forks(every)

    newest_size = max((item.checkpoint.size for item in every), default=0)
    level = _fingerprint_level(newest_size)
    prints = {level: newest_size >> level}
    if state is not None:
        old = state.verified_size >> state.fingerprint_level
        prints[state.fingerprint_level] = max(prints.get(state.fingerprint_level, 0), old)
    tree = _TreeBuilder((item.checkpoint.size for item in every), prints)
    economy = _stream(source, tree, progress, jobs)
    size, root = tree.finish()

    context_evidence = {
        "origin": origin,
        "verifier_keys": [verifier.to_text() for verifier in verifiers],
        "recomputed": {"size": size, "root": _b64(root)},
    }
    _check_tree(source, every, tree, size=size, state=state, context=context_evidence)
    if tree_size is not None and tree_size != size:
        raise TamperingDetected(
            "entry-count",
            f"the log claims {tree_size} entries but holds {size}",
            {**context_evidence, "claimed_size": tree_size},
        )
    if economy.violation is not None:
        violation = economy.violation
        raise EconomyViolation(
            violation["rule"],
            violation["message"],
            {**context_evidence, "entries": violation["entries"]},
        )
    replayed_total = sum(economy.balances.values())
    # The replay itself keeps points credited = balances + points debited; what the service
    # reports is checked against it below.
    assert economy.credited == replayed_total + economy.debited
    if balances is not None:
        reported = balances() if callable(balances) else balances
        _check_balances(economy, reported, context_evidence)

    notes = {(i.checkpoint.size, i.checkpoint.root_hash): i.note for i in every}
    kept_notes = tuple(notes[key] for key in sorted(notes)[-MAX_KEPT_CHECKPOINTS:])
    new_state = AuditState(
        origin=origin,
        checkpoints=kept_notes,
        verified_size=newest_size,
        fingerprint_level=level,
        fingerprints=tuple(tree.fingerprints[level][: newest_size >> level]),
    )
    return AuditReport(
        origin=origin,
        entries=size,
        root=root,
        checkpoints=len(seen),
        newest_checkpoint_size=newest_size,
        kinds=dict(sorted(economy.kinds.items())),
        credited=economy.credited,
        debited=economy.debited,
        deposited=economy.deposited,
        balances_total=replayed_total,
        pseudonyms=len(economy.balances),
        withdrawn_coins={d.hex(): n for d, n in sorted(economy.withdrawn.items())},
        deposited_coins={d.hex(): n for d, n in sorted(economy.deposited_coins.items())},
        state=new_state,
    )


def _stream(
    source: EntrySource,
    tree: _TreeBuilder,
    progress: Callable[[int], None] | None,
    jobs: int,
) -> _Economy:
    """One pass over the entries: the tree here, the economy here or in a second process."""
    done = 0
    if jobs > 1:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            replay = pool.submit(_replay_economy, source)
            for chunk in source.chunks():
                tree.add(leaf_hashes(chunk))
                done += len(chunk)
                if progress is not None:
                    progress(done)
            return replay.result()
    economy = _Economy()
    for chunk in source.chunks():
        tree.add(leaf_hashes(chunk))
        economy.add(chunk)
        done += len(chunk)
        if progress is not None:
            progress(done)
    return economy


def _check_tree(
    source: EntrySource,
    every: Sequence[_Seen],
    tree: _TreeBuilder,
    *,
    size: int,
    state: AuditState | None,
    context: dict[str, Any],
) -> None:
    """Every checkpoint against the recomputed tree (see the module docstring)."""
    if not every:
        return
    beyond = [item for item in every if item.checkpoint.size > size]
    if beyond:
        item = max(beyond, key=lambda i: i.checkpoint.size)
        rule = "rollback" if item.source == "state" else "missing-entries"
        raise TamperingDetected(
            rule,
            f"a signed checkpoint covers {item.checkpoint.size} entries, the log holds {size}",
            {**context, "checkpoints": [item.evidence()]},
        )
    ordered = sorted(every, key=lambda i: (i.checkpoint.size, i.source != "export"))
    bad = [
        item
        for item in ordered
        if not hmac.compare_digest(tree.roots[item.checkpoint.size], item.checkpoint.root_hash)
    ]
    if not bad:
        return
    newest = ordered[-1]
    first = bad[0]
    if newest not in bad:
        # The newest checkpoint matches the entries, an older one does not: the log signed two
        # checkpoints no consistency proof connects. Show the proof the entries give.
        size1, size2 = first.checkpoint.size, newest.checkpoint.size
        proof: list[bytes] = []
        recomputed1 = tree.roots[size1]
        if 0 < size1 < size2:
            memory = _memory_tree(source, size2)
            proof = memory.consistency_proof(size1, size2)
        try:
            verify_consistency(
                size1, size2, proof, first.checkpoint.root_hash, newest.checkpoint.root_hash
            )
            failure = "verified"  # pragma: no cover - the roots differ, so it cannot
        except ProofError as exc:
            failure = str(exc)
        raise TamperingDetected(
            "inconsistent-checkpoints",
            f"the checkpoint of size {size1} is not consistent with the newest, size {size2}",
            {
                **context,
                "checkpoints": [first.evidence(), newest.evidence()],
                "consistency_proof": {
                    "size1": size1,
                    "size2": size2,
                    "proof": [_b64(node) for node in proof],
                    "recomputed_root1": _b64(recomputed1),
                    "verification": failure,
                },
            },
        )
    good_sizes = [i.checkpoint.size for i in ordered if i not in bad]
    low = max((s for s in good_sizes if s < first.checkpoint.size), default=0)
    high = first.checkpoint.size
    changed = _first_changed_fingerprint(state, tree)
    if changed is not None:
        assert state is not None
        low = max(low, changed << state.fingerprint_level)
        high = min(high, (changed + 1) << state.fingerprint_level)
    raise TamperingDetected(
        "root-mismatch",
        f"the entries do not give the root of the signed checkpoint of size "
        f"{first.checkpoint.size}; the change lies in entries {low}..{high - 1}",
        {
            **context,
            "checkpoints": [first.evidence()],
            "recomputed_root_at_checkpoint": _b64(tree.roots[first.checkpoint.size]),
            "changed_range": [low, high],
            "entries": _entries_between(source, low, high),
        },
    )


def _fingerprint_level(size: int) -> int:
    """The lowest level with at most MAX_FINGERPRINTS perfect subtrees in ``size`` leaves (kept
    within one chunk, where the builder sees every level)."""
    level = 0
    while size >> level > MAX_FINGERPRINTS and level < _CHUNK_LEVEL:
        level += 1
    return level


def _first_changed_fingerprint(state: AuditState | None, tree: _TreeBuilder) -> int | None:
    if state is None:
        return None
    new_prints = tree.fingerprints[state.fingerprint_level]
    for position, (old, new) in enumerate(zip(state.fingerprints, new_prints, strict=False)):
        if old != new:
            return position
    return None


def _memory_tree(source: EntrySource, size: int) -> MemoryTree:
    hashes: list[bytes] = []
    for chunk in source.chunks():
        hashes.extend(leaf_hashes(chunk[: size - len(hashes)]))
        if len(hashes) >= size:
            break
    return MemoryTree.from_leaf_hashes(hashes)


def _entries_between(source: EntrySource, low: int, high: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    stop = min(high, low + MAX_EVIDENCE_ENTRIES)
    index = 0
    for chunk in source.chunks():
        for data in chunk:
            if low <= index < stop:
                found.append(
                    {"index": index, "data": _b64(data), "leaf_hash": _b64(leaf_hash(data))}
                )
            index += 1
        if index >= stop:
            break
    return found


def _check_balances(
    economy: _Economy, reported: Iterable[tuple[str, int]], context: dict[str, Any]
) -> None:
    """The balances the service reports against the replay: first the totals (points credited
    = balances + points debited), then pseudonym by pseudonym."""
    replayed = {pseudonym.hex(): points for pseudonym, points in economy.balances.items()}
    service: dict[str, int] = {}
    for pseudonym, points in reported:
        if pseudonym in service:
            raise EconomyViolation(
                "balances-mismatch",
                "the service reports a pseudonym's balance twice",
                {**context, "pseudonym": pseudonym},
            )
        service[pseudonym] = points
    total = sum(service.values())
    if economy.credited != total + economy.debited:
        raise EconomyViolation(
            "points-equation",
            f"points credited ({economy.credited}) differ from the reported balances ({total}) "
            f"plus points debited ({economy.debited})",
            {
                **context,
                "points_credited": economy.credited,
                "points_debited": economy.debited,
                "reported_balances_total": total,
            },
        )
    for pseudonym in sorted(service.keys() | replayed.keys()):
        if service.get(pseudonym) != replayed.get(pseudonym):
            raise EconomyViolation(
                "balances-mismatch",
                "the service's balance for a pseudonym differs from the log's",
                {
                    **context,
                    "pseudonym": pseudonym,
                    "reported": service.get(pseudonym),
                    "replayed": replayed.get(pseudonym),
                },
            )


# --- receipts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedReceipt:
    """A receipt that verified: the entry, its index and the checkpoint that covers it."""

    index: int
    entry: Entry
    data: bytes
    leaf_hash: bytes
    checkpoint: Checkpoint


def verify_receipt(
    data: bytes, verifiers: Sequence[NoteVerifier], *, origin: str
) -> VerifiedReceipt:
    """Check a receipt (a C2SP tlog-proof carrying the entry in ``extra``, see
    :mod:`ledger.checkpoints`) offline.

    A malformed file raises :class:`~ledger.errors.ProofError`; a receipt that does not verify
    (signature, inclusion proof, or an entry that is not a valid encoding) raises
    :class:`~ledger.errors.TamperingDetected` with evidence.
    """
    proof = TlogProof.parse(data)
    if proof.extra is None:
        raise ProofError("the receipt carries no entry (no extra line)")
    leaf = leaf_hash(proof.extra)
    evidence = {
        "receipt": data.decode("utf-8", "replace"),
        "verifier_keys": [verifier.to_text() for verifier in verifiers],
        "entries": [{"index": proof.index, "data": _b64(proof.extra), "leaf_hash": _b64(leaf)}],
    }
    try:
        checkpoint = proof.verify(leaf, verifiers, origin=origin)
    except CheckpointError as exc:
        raise TamperingDetected("receipt-checkpoint", str(exc), evidence) from None
    except ProofError as exc:
        raise TamperingDetected("receipt-inclusion", str(exc), evidence) from None
    try:
        entry = decode_entry(proof.extra)
    except EntryError as exc:
        raise TamperingDetected("receipt-entry", str(exc), evidence) from None
    return VerifiedReceipt(proof.index, entry, proof.extra, leaf, checkpoint)
