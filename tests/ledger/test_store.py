"""The ledger store on SQLite and PostgreSQL: the entry encoding, appends, reads, proofs, tiles,
checkpoints, receipts, exports and the append-only triggers.

The helpers at the top (pseudonyms, events of a consistent economy, a migrated engine, a
keyring) are shared with the other ledger test modules.
"""

from __future__ import annotations

import hashlib
import os
import random
import struct
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from identity import migrate
from identity.db import create_engine
from keys.envelope import KeyEncryptionKey
from keys.keyring import Keyring
from keys.model import Purpose
from keys.note import parse_verifier_key
from keys.store import DirectoryKeyStore
from ledger.audit import verify_receipt
from ledger.checkpoint import open_checkpoint
from ledger.checkpoints import issue_checkpoint, latest_checkpoint, receipt, verifier_keys
from ledger.entries import (
    ACT_CREDITED_LAYOUT,
    ACT_CREDITED_VIEW,
    ActCredited,
    CatalogueChanged,
    CoinCount,
    CoinsDeposited,
    DenominationAnnounced,
    Entry,
    Event,
    Kind,
    SpentCoin,
    WithdrawalDebited,
    decode_entry,
    describe_entry,
    encode_entry,
    scan_deposit,
    scan_withdrawal,
)
from ledger.errors import (
    AppendRejected,
    CheckpointError,
    EntryError,
    ExportError,
    IdempotencyConflict,
    InsufficientBalance,
    LedgerError,
    NotCheckpointed,
    ProofError,
    TileError,
)
from ledger.export import ExportReader, export, write_export
from ledger.merkle import (
    EMPTY_ROOT,
    MemoryTree,
    leaf_hash,
    tree_root,
    verify_consistency,
    verify_inclusion,
)
from ledger.store import (
    Appended,
    AppendRequest,
    CoinSpend,
    DepositRows,
    IdempotencyKey,
    LedgerStore,
)
from ledger.tables import ledger_metadata
from ledger.tiles import ENTRIES, Tile, TileHashes, parse_entry_bundle, tile_data, tile_for_size
from tests.conftest import make_settings

ORIGIN = "nicecotedazur.example/ledger"
T0 = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
PARTNER = "lignes-azur"

# --- helpers shared by the ledger tests -------------------------------------------------------


def pseudonym(n: int) -> str:
    """A ledger pseudonym (128 bits, hex), distinct for every ``n``."""
    return f"{n:032x}"


def act(who: int, points: int = 5, n: int = 0, *, partner: str = PARTNER) -> ActCredited:
    """An act credited to pseudonym ``who``; ``n`` makes the evidence digest distinct."""
    return ActCredited(
        pseudonym(who),
        partner,
        "tram_ride",
        points,
        1,
        int(T0.timestamp()) + n,
        hashlib.sha256(b"evidence %d %d" % (who, n)).digest(),
    )


def denomination(value: int, seed: int = 0) -> DenominationAnnounced:
    """A denomination key announcement (the key bytes are opaque to the ledger)."""
    key = hashlib.sha256(b"denomination %d %d" % (value, seed)).digest() * 9
    return DenominationAnnounced(key, value, 0, 2**40, 2**40, 2**40)


def economy_events(acts: int, seed: int = 1, pseudonyms: int = 7) -> list[Event]:
    """A valid economy: a catalogue, two denominations, acts, withdrawals and deposits."""
    rng = random.Random(seed)
    tens, fifties = denomination(10, seed), denomination(50, seed)
    events: list[Event] = [CatalogueChanged(1, b'{"tram_ride": 5}'), tens, fifties]
    balances = dict.fromkeys(range(pseudonyms), 0)
    unspent: list[DenominationAnnounced] = []
    for n in range(acts):
        who = rng.randrange(pseudonyms)
        points = rng.choice((5, 10, 20, 30))
        events.append(act(who, points, n))
        balances[who] += points
        if rng.random() < 0.25:
            rich = max(balances, key=lambda k: balances[k])
            kind = tens if balances[rich] < 50 else fifties
            if balances[rich] >= kind.value:
                balances[rich] -= kind.value
                events.append(
                    WithdrawalDebited(
                        pseudonym(rich), kind.value, (CoinCount(kind.denomination, 1),)
                    )
                )
                unspent.append(kind)
        if unspent and rng.random() < 0.2:
            spent = unspent.pop(0)
            coin = hashlib.sha256(b"coin %d %d" % (seed, n)).digest()
            events.append(
                CoinsDeposited(
                    "shop-massena",
                    spent.value,
                    hashlib.sha256(b"order %d" % n).digest(),
                    (SpentCoin(spent.denomination, coin),),
                )
            )
    return events


def request(event: Event) -> AppendRequest:
    """The append request the service would make for ``event``: a deposit comes with its
    idempotency key and the rows that spend its coins."""
    if not isinstance(event, CoinsDeposited):
        return AppendRequest(event)
    order = event.request.hex()
    key = IdempotencyKey("#deposit", f"{event.partner} {order}", event.request)
    spends = tuple(CoinSpend(c.coin, c.denomination, 0, bytes(64)) for c in event.coins)
    return AppendRequest(event, key, deposit=DepositRows(order, spends))


def append(store: LedgerStore, event: Event) -> Appended:
    """Append one event as :func:`request` makes it; raises if it is refused."""
    (outcome,) = store.append_many([request(event)])
    if isinstance(outcome, AppendRejected):
        raise outcome
    return outcome


def encoded(events: list[Event], start: datetime = T0) -> list[bytes]:
    """The entries' bytes as a store appending ``events`` one per second would write them."""
    base = int(start.timestamp())
    return [encode_entry(Entry(base + i, event)) for i, event in enumerate(events)]


class Ticking:
    """A clock that moves one second per call (recorded_at differs between entries)."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


def ledger_engine(url: str, tmp_path: Path) -> sa.Engine:
    """An engine configured as the service configures it, with the ledger migrations applied."""
    settings = make_settings(tmp_path, ledger_database_url=url)
    engine = create_engine(settings.ledger_url, settings)
    migrate.upgrade(migrate.Store.LEDGER, engine)
    return engine


def make_keyring(directory: Path) -> Keyring:
    """A keyring with a ledger checkpoint key, in a directory."""
    keyring = Keyring(DirectoryKeyStore(directory), KeyEncryptionKey(os.urandom(32)))
    keyring.ensure([Purpose.LEDGER_CHECKPOINT])
    return keyring


def idem(key: str, request: bytes = b"request") -> IdempotencyKey:
    return IdempotencyKey(PARTNER, key, hashlib.sha256(request).digest())


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def store(ledger_url: str, tmp_path: Path) -> Iterator[LedgerStore]:
    engine = ledger_engine(ledger_url, tmp_path)
    yield LedgerStore(engine, clock=Ticking())
    engine.dispose()


@pytest.fixture
def keyring(tmp_path: Path) -> Keyring:
    return make_keyring(tmp_path / "keys")


# --- entries: the byte encoding ---------------------------------------------------------------


SAMPLES: list[Event] = [
    act(1, 7, 3),
    WithdrawalDebited(
        pseudonym(2),
        60,
        (CoinCount(b"\x01" * 32, 1), CoinCount(b"\x02" * 32, 5)),
    ),
    CoinsDeposited(
        "shop-massena",
        20,
        b"\x03" * 32,
        (SpentCoin(b"\x01" * 32, b"\x07" * 32), SpentCoin(b"\x01" * 32, b"\x08" * 32)),
    ),
    denomination(10),
    CatalogueChanged(3, b'{"acts": []}'),
]


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).__name__)
def test_entries_round_trip(event: Event) -> None:
    entry = Entry(1_795_000_000, event)
    data = encode_entry(entry)
    assert decode_entry(data) == entry
    assert data[0] == 1
    assert data[1] == event.KIND
    assert struct.unpack(">Q", data[2:10]) == (1_795_000_000,)
    assert describe_entry(entry)["kind"] == event.KIND.name.lower()


def test_act_layout_is_fixed() -> None:
    data = encode_entry(Entry(5, act(9, 12, 1)))
    assert len(data) == ACT_CREDITED_LAYOUT.size == ACT_CREDITED_VIEW.size == 170
    version, who, points, catalogue, fields = ACT_CREDITED_VIEW.unpack(data)
    assert (version, who.hex(), points, catalogue) == (1, pseudonym(9), 12, 1)
    assert fields == PARTNER.encode().ljust(64, b"\0") + b"tram_ride".ljust(32, b"\0")


def _flip(data: bytes, position: int) -> bytes:
    return data[:position] + bytes([data[position] ^ 0x01]) + data[position + 1 :]


@pytest.mark.parametrize(
    "mangle",
    [
        lambda d: b"\x02" + d[1:],  # unknown version
        lambda d: d[:1] + b"\x09" + d[2:],  # unknown kind
        lambda d: d + b"\x00",  # trailing byte
        lambda d: d[:-1],  # truncated
        lambda d: d[:10],  # header only
        lambda d: b"",
    ],
    ids=["version", "kind", "trailing", "truncated", "header-only", "empty"],
)
@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).__name__)
def test_entries_reject_malformed_bytes(event: Event, mangle: object) -> None:
    data = encode_entry(Entry(1, event))
    assert callable(mangle)
    with pytest.raises(EntryError):
        decode_entry(mangle(data))


def test_entries_reject_non_canonical_fields() -> None:
    data = encode_entry(Entry(1, act(1)))
    partner_at = 10 + 16 + 4 + 4 + 8 + 32
    # A NUL inside the partner token, a byte after its padding, zero points, catalogue 0.
    for bad in (
        data[:partner_at] + b"ab\x00c" + data[partner_at + 4 :],
        data[: partner_at + 63] + b"x" + data[partner_at + 64 :],
        data[:26] + b"\x00\x00\x00\x00" + data[30:],
        data[:30] + b"\x00\x00\x00\x00" + data[34:],
    ):
        with pytest.raises(EntryError):
            decode_entry(bad)
    unsorted = encode_entry(Entry(1, SAMPLES[1]))
    first, second = unsorted[36:68], unsorted[72:104]
    swapped = unsorted[:36] + second + unsorted[68:72] + first + unsorted[104:]
    with pytest.raises(EntryError):
        decode_entry(swapped)
    with pytest.raises(EntryError):
        scan_withdrawal(swapped)


def test_entries_refuse_bad_fields() -> None:
    with pytest.raises(EntryError):
        act(1, 0)
    with pytest.raises(EntryError):
        ActCredited("Jean Dupont", PARTNER, "tram_ride", 5, 1, 0, b"\0" * 32)
    with pytest.raises(EntryError):
        ActCredited(pseudonym(1), "has space", "tram_ride", 5, 1, 0, b"\0" * 32)
    with pytest.raises(EntryError):
        WithdrawalDebited(pseudonym(1), 5, ())
    with pytest.raises(EntryError):
        DenominationAnnounced(b"k", 1, 10, 10, 10, 10)
    with pytest.raises(EntryError):
        encode_entry("not an entry")  # type: ignore[arg-type]


events_strategy = st.one_of(
    st.builds(
        ActCredited,
        st.binary(min_size=16, max_size=16).map(bytes.hex),
        st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=64),
        st.text("abcdefghijklmnopqrstuvwxyz0123456789_.-", min_size=1, max_size=32),
        st.integers(1, 2**32 - 1),
        st.integers(1, 2**32 - 1),
        st.integers(0, 2**64 - 1),
        st.binary(min_size=32, max_size=32),
    ),
    st.builds(
        WithdrawalDebited,
        st.binary(min_size=16, max_size=16).map(bytes.hex),
        st.integers(1, 2**64 - 1),
        st.dictionaries(
            st.binary(min_size=32, max_size=32), st.integers(1, 2**32 - 1), min_size=1, max_size=4
        ).map(lambda d: tuple(CoinCount(k, v) for k, v in sorted(d.items()))),
    ),
    st.builds(
        CoinsDeposited,
        st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=64),
        st.integers(1, 2**64 - 1),
        st.binary(min_size=32, max_size=32),
        st.sets(st.binary(min_size=64, max_size=64), min_size=1, max_size=4).map(
            lambda s: tuple(SpentCoin(c[:32], c[32:]) for c in sorted(s))
        ),
    ),
)


@settings(max_examples=150, deadline=None)
@given(event=events_strategy, at=st.integers(0, 2**64 - 1), data=st.data())
def test_bulk_readers_agree_with_decode_entry(event: Event, at: int, data: st.DataObject) -> None:
    """scan_* and ACT_CREDITED_VIEW accept exactly what decode_entry accepts, same fields."""
    raw = encode_entry(Entry(at, event))
    position = data.draw(st.integers(0, len(raw) - 1))
    for candidate in (raw, _flip(raw, position), raw[:position], raw + b"\x00"):
        try:
            decoded: Entry | None = decode_entry(candidate)
        except EntryError:
            decoded = None
        kind = candidate[1] if len(candidate) > 1 else 0
        if kind == Kind.WITHDRAWAL_DEBITED:
            try:
                scanned = scan_withdrawal(candidate)
            except EntryError:
                assert decoded is None
            else:
                assert decoded is not None
                assert isinstance(decoded.event, WithdrawalDebited)
                assert scanned[0] == decoded.recorded_at
                assert scanned[1].hex() == decoded.event.pseudonym
                assert scanned[2] == decoded.event.points
                assert [CoinCount(d, c) for d, c in scanned[3]] == list(decoded.event.coins)
        elif kind == Kind.COINS_DEPOSITED:
            try:
                deposit = scan_deposit(candidate)
            except EntryError:
                assert decoded is None
            else:
                assert decoded is not None
                assert isinstance(decoded.event, CoinsDeposited)
                assert deposit[1:3] == (decoded.event.partner, decoded.event.points)
                assert [SpentCoin(d, c) for d, c in deposit[3]] == list(decoded.event.coins)
        elif decoded is not None and isinstance(decoded.event, ActCredited):
            _, who, points, catalogue, _ = ACT_CREDITED_VIEW.unpack(candidate)
            assert (who.hex(), points, catalogue) == (
                decoded.event.pseudonym,
                decoded.event.points,
                decoded.event.catalogue,
            )
        if decoded is not None:
            assert encode_entry(decoded) == candidate


# --- schema -----------------------------------------------------------------------------------


def test_migration_matches_the_tables(store: LedgerStore) -> None:
    with store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": False})
        differences = compare_metadata(context, ledger_metadata)
    assert [d for d in differences if "alembic_version" not in str(d)] == []


def test_empty_log(store: LedgerStore) -> None:
    head = store.head()
    assert (head.size, head.root) == (0, EMPTY_ROOT)
    assert store.entry(0) is None
    assert store.root_at(0) == EMPTY_ROOT
    assert store.balance(pseudonym(1)) == 0


# --- appending and reading --------------------------------------------------------------------


def test_append_read_and_balances(store: LedgerStore) -> None:
    tree = MemoryTree()
    events = economy_events(30, seed=3)
    for event in events:
        appended = append(store, event)
        assert appended.index == tree.size
        assert appended.leaf_hash == leaf_hash(appended.data)
        assert decode_entry(appended.data) == appended.entry
        tree.append(appended.leaf_hash)
    head = store.head()
    assert (head.size, head.root) == (len(events), tree.root())
    logged = store.entries(0, head.size)
    assert [item.entry.event for item in logged] == events
    recorded = [item.entry.recorded_at for item in logged]
    assert recorded == sorted(recorded)
    # Balances are the replay of the log.
    expected: dict[str, int] = {}
    for event in events:
        if isinstance(event, ActCredited):
            expected[event.pseudonym] = expected.get(event.pseudonym, 0) + event.points
        elif isinstance(event, WithdrawalDebited):
            expected[event.pseudonym] -= event.points
    for who, points in expected.items():
        assert store.balance(who) == points
    # A pseudonym's history: its acts and withdrawals, newest first, paged.
    who = pseudonym(0)
    mine = [i for i, e in enumerate(events) if getattr(e, "pseudonym", None) == who]
    history = store.history(who, limit=3)
    assert [item.index for item in history] == mine[::-1][:3]
    older = store.history(who, before=history[-1].index, limit=100)
    assert [item.index for item in older] == mine[::-1][3:]


def test_append_many_applies_requests_in_order(store: LedgerStore) -> None:
    tens = denomination(10)
    spend = WithdrawalDebited(pseudonym(1), 10, (CoinCount(tens.denomination, 1),))
    outcomes = store.append_many(
        [
            AppendRequest(tens),
            AppendRequest(spend),  # nothing credited yet: refused
            AppendRequest(act(1, 5, 1)),
            AppendRequest(act(1, 5, 2)),
            AppendRequest(spend),  # now the balance covers it
            AppendRequest(spend),  # and not twice
        ]
    )
    assert isinstance(outcomes[1], InsufficientBalance)
    assert isinstance(outcomes[5], InsufficientBalance)
    assert [getattr(o, "index", None) for o in outcomes] == [0, None, 1, 2, 3, None]
    assert store.head().size == 4
    assert store.balance(pseudonym(1)) == 0
    with pytest.raises(InsufficientBalance):
        store.append(spend)
    assert store.append_many([]) == []


def test_idempotency_keys(store: LedgerStore) -> None:
    first = store.append(act(1, 5, 1), idempotency=idem("k1"))
    again = store.append(act(1, 5, 1), idempotency=idem("k1"))
    assert again.replayed
    assert not first.replayed
    assert (again.index, again.data) == (first.index, first.data)
    with pytest.raises(IdempotencyConflict):
        store.append(act(1, 50, 1), idempotency=idem("k1", b"another request"))
    # Another partner may use the same key.
    other = store.append(act(2, 5, 1), idempotency=replace(idem("k1"), partner="velobleu"))
    assert other.index == 1
    assert not other.replayed
    # Within one batch: the second use answers with the first, a conflict is refused.
    outcomes = store.append_many(
        [
            AppendRequest(act(3, 5, 1), idem("k2")),
            AppendRequest(act(3, 5, 1), idem("k2")),
            AppendRequest(act(3, 9, 1), idem("k2", b"different")),
            AppendRequest(act(3, 5, 2), idem("k1")),
        ]
    )
    assert [getattr(o, "index", None) for o in outcomes] == [2, 2, None, 0]
    assert [getattr(o, "replayed", None) for o in outcomes] == [False, True, None, True]
    assert isinstance(outcomes[2], IdempotencyConflict)
    assert store.head().size == 3
    assert store.balance(pseudonym(1)) == 5
    found = store.find_idempotent(idem("k2"))
    assert found is not None
    assert found.index == 2
    assert found.replayed
    assert store.find_idempotent(idem("never")) is None
    with pytest.raises(IdempotencyConflict):
        store.find_idempotent(idem("k2", b"different"))


def test_requests_are_checked(store: LedgerStore) -> None:
    with pytest.raises(LedgerError):
        store.append_many(["not a request"])  # type: ignore[list-item]
    with pytest.raises(LedgerError):
        IdempotencyKey(PARTNER, "", b"\0" * 32)
    with pytest.raises(LedgerError):
        IdempotencyKey(PARTNER, "k", b"short")
    with pytest.raises(EntryError):
        store.append("not an event")  # type: ignore[arg-type]
    assert store.head().size == 0


# --- proofs and tiles -------------------------------------------------------------------------


def test_proofs_match_the_memory_tree(store: LedgerStore) -> None:
    tree = MemoryTree()
    for batch in (1, 2, 3, 1, 7, 9, 1, 12):
        for appended in store.append_many(
            [AppendRequest(act(1, 1, tree.size + i)) for i in range(batch)]
        ):
            assert not isinstance(appended, Exception)
            tree.append(appended.leaf_hash)
    size = tree.size
    for n in range(1, size + 1):
        root = store.root_at(n)
        assert root == tree.root_at(n)
        for index in range(n):
            proof = store.inclusion_proof(index, n)
            assert proof == tree.inclusion_proof(index, n)
            verify_inclusion(tree.leaf_hash(index), index, n, proof, root)
        for m in range(1, n + 1):
            proof = store.consistency_proof(m, n)
            assert proof == tree.consistency_proof(m, n)
            verify_consistency(m, n, proof, tree.root_at(m), root)
    with pytest.raises(ProofError):
        store.inclusion_proof(0, size + 1)
    with pytest.raises(ProofError):
        store.inclusion_proof(size, size)
    with pytest.raises(ProofError):
        store.consistency_proof(0, size)
    with pytest.raises(ProofError):
        store.root_at(size + 1)


def test_a_proof_reads_its_nodes_in_one_query(store: LedgerStore) -> None:
    store.append_many([AppendRequest(act(1, 1, i)) for i in range(1000)])
    statements: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        statements.append(statement)

    sa.event.listen(store.engine, "before_cursor_execute", record)
    try:
        store.inclusion_proof(437, 1000)
        store.consistency_proof(437, 1000)
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", record)
    tree_reads = [s for s in statements if "ledger_nodes" in s or "ledger_entries" in s]
    assert len(tree_reads) == 2  # one per proof, whatever the proof's length


def test_tiles_and_entry_bundles(store: LedgerStore) -> None:
    events = [act(1, 1, i) for i in range(600)]
    appended = store.append_many([AppendRequest(e) for e in events])
    tree = MemoryTree()
    for item in appended:
        assert not isinstance(item, Exception)
        tree.append(item.leaf_hash)
    size = tree.size
    for level, index in ((0, 0), (0, 1), (0, 2), (1, 0)):
        tile = tile_for_size(level, index, size)
        assert store.tile(tile) == tile_data(tree, tile)
    assert tile_for_size(0, 2, size).width == 600 - 512
    narrower = Tile(0, 2, 10)  # a partial tile an older tree size had
    assert store.tile(narrower) == tile_data(tree, narrower)
    bundle = store.entry_bundle(tile_for_size(ENTRIES, 1, size))
    datas = [item.data for item in appended if not isinstance(item, Exception)]
    assert parse_entry_bundle(bundle) == datas[256:512]
    assert tree_root(TileHashes(store.tile, size), size) == store.head().root
    with pytest.raises(TileError):
        store.tile(Tile(0, 3, 1))
    with pytest.raises(TileError):
        store.tile(Tile(0, 2, 89))
    with pytest.raises(TileError):
        store.entry_bundle(Tile(0, 0, 1))
    with pytest.raises(TileError):
        store.tile(Tile(ENTRIES, 0, 1))


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batches=st.lists(st.integers(1, 33), min_size=1, max_size=6), data=st.data())
def test_random_appends_keep_the_tree(
    store: LedgerStore, batches: list[int], data: st.DataObject
) -> None:
    """For any sequence of batch sizes (on top of whatever the log already holds), the stored
    root is MemoryTree's, and every inclusion and consistency proof served verifies."""
    head = store.head()
    tree = MemoryTree.from_leaf_hashes(item.leaf_hash for item in store.entries(0, head.size))
    for batch in batches:
        if batch == 1:
            tree.append(store.append(act(2, 1, tree.size)).leaf_hash)
        else:
            for item in store.append_many(
                [AppendRequest(act(2, 1, tree.size + i)) for i in range(batch)]
            ):
                assert not isinstance(item, Exception)
                tree.append(item.leaf_hash)
        assert store.head().root == tree.root()
    size = tree.size
    # Draws independent of the log's size (which depends on earlier examples), mapped onto it.
    picks = data.draw(st.lists(st.integers(0, 2**31), min_size=15, max_size=15))
    for a, b, c in zip(picks[0::3], picks[1::3], picks[2::3], strict=True):
        n = 1 + a % size
        index = b % n
        m = 1 + c % n
        verify_inclusion(
            tree.leaf_hash(index), index, n, store.inclusion_proof(index, n), tree.root_at(n)
        )
        verify_consistency(m, n, store.consistency_proof(m, n), tree.root_at(m), tree.root_at(n))


# --- checkpoints and receipts -----------------------------------------------------------------


def test_checkpoints(store: LedgerStore, keyring: Keyring) -> None:
    keys = [parse_verifier_key(text) for text in verifier_keys(keyring, ORIGIN)]
    assert len(keys) == 2  # the active key and the published next one
    empty = issue_checkpoint(store, keyring, origin=ORIGIN)
    assert (empty.size, empty.root) == (0, EMPTY_ROOT)
    store.append_many([AppendRequest(act(1, 1, i)) for i in range(5)])
    first = issue_checkpoint(store, keyring, origin=ORIGIN)
    opened = open_checkpoint(first.note, keys, origin=ORIGIN)
    assert (opened.size, opened.root_hash) == (5, store.head().root)
    # Nothing appended since: the same checkpoint, nothing signed.
    assert issue_checkpoint(store, keyring, origin=ORIGIN) == first
    assert latest_checkpoint(store) == first
    with pytest.raises(CheckpointError):
        issue_checkpoint(store, keyring, origin="another.example/ledger")
    # A rotated key signs a new checkpoint of the same size.
    keyring.rotate(Purpose.LEDGER_CHECKPOINT)
    rotated = issue_checkpoint(store, keyring, origin=ORIGIN)
    assert rotated.size == 5
    assert rotated.note != first.note
    open_checkpoint(rotated.note, keys, origin=ORIGIN)  # the next key was published before


def test_receipts(store: LedgerStore, keyring: Keyring) -> None:
    store.append_many([request(event) for event in economy_events(10)])
    with pytest.raises(NotCheckpointed):
        receipt(store, 3)
    checkpoint = issue_checkpoint(store, keyring, origin=ORIGIN)
    store.append(act(1, 1, 99))
    with pytest.raises(NotCheckpointed):
        receipt(store, checkpoint.size)
    keys = [parse_verifier_key(text) for text in verifier_keys(keyring, ORIGIN)]
    for index in range(checkpoint.size):
        proof = receipt(store, index)
        verified = verify_receipt(proof.to_bytes(), keys, origin=ORIGIN)
        logged = store.entry(index)
        assert logged is not None
        assert (verified.index, verified.entry) == (index, logged.entry)
        assert verified.checkpoint.size == checkpoint.size


def test_the_database_refuses_a_stale_checkpoint(store: LedgerStore, keyring: Keyring) -> None:
    store.append(act(1))
    issued = issue_checkpoint(store, keyring, origin=ORIGIN)
    store.append(act(1, 1, 2))
    for size, root in ((issued.size, issued.root), (2, b"\0" * 32)):
        with pytest.raises(sa.exc.DBAPIError, match="checkpoint"), store.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO ledger_checkpoints (origin, size, root, kid, note, created_at) "
                    "VALUES (:origin, :size, :root, 'k', :note, :now)"
                ),
                {"origin": ORIGIN, "size": size, "root": root, "note": b"n", "now": T0},
            )


# --- append-only in the database --------------------------------------------------------------


REFUSED = [
    "UPDATE ledger_entries SET kind = 2",
    "UPDATE ledger_entries SET data = data WHERE idx = 0",
    "DELETE FROM ledger_entries WHERE idx = 0",
    "DELETE FROM ledger_entries",
    "UPDATE ledger_nodes SET hash = hash",
    "DELETE FROM ledger_nodes",
    "UPDATE ledger_checkpoints SET size = 0",
    "DELETE FROM ledger_checkpoints",
    "UPDATE ledger_idempotency SET idx = 1",
    "DELETE FROM ledger_idempotency",
    "DELETE FROM ledger_head",
    "UPDATE ledger_head SET size = size - 1",
    "DELETE FROM ledger_balances",
    "UPDATE coin_deposits SET points = points",
    "DELETE FROM coin_deposits",
    "UPDATE coin_spent SET partner = partner",
    "DELETE FROM coin_spent",
]
TRUNCATE_REFUSED = [
    f"TRUNCATE {table}"
    for table in (
        "ledger_entries",
        "ledger_nodes",
        "ledger_checkpoints",
        "ledger_idempotency",
        "ledger_head",
        "ledger_balances",
        "coin_deposits",
        "coin_spent",
    )
]


@pytest.fixture
def filled(store: LedgerStore, keyring: Keyring) -> LedgerStore:
    store.append_many([AppendRequest(act(1, 5, i), idem(f"k{i}")) for i in range(4)])
    coin = SpentCoin(denomination(1).denomination, hashlib.sha256(b"coin").digest())
    append(store, CoinsDeposited(PARTNER, 1, hashlib.sha256(b"order").digest(), (coin,)))
    issue_checkpoint(store, keyring, origin=ORIGIN)
    return store


@pytest.mark.parametrize("statement", REFUSED)
def test_triggers_refuse_changes(filled: LedgerStore, statement: str) -> None:
    before = _snapshot(filled)
    with pytest.raises(sa.exc.DBAPIError, match="ledger"), filled.engine.begin() as conn:
        conn.exec_driver_sql(statement)
    assert _snapshot(filled) == before


@pytest.mark.postgres
@pytest.mark.parametrize("statement", TRUNCATE_REFUSED)
def test_triggers_refuse_truncate_even_as_replica(
    postgres_url: str, tmp_path: Path, statement: str
) -> None:
    engine = ledger_engine(postgres_url, tmp_path)
    store = LedgerStore(engine)
    store.append(act(1))
    try:
        with engine.begin() as conn:
            # ENABLE ALWAYS: a replication-role session does not skip them.
            conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
            with pytest.raises(sa.exc.DBAPIError, match="ledger"):
                conn.exec_driver_sql(statement)
        assert store.head().size == 1
    finally:
        engine.dispose()


def test_balances_never_go_negative(filled: LedgerStore) -> None:
    with pytest.raises(sa.exc.IntegrityError), filled.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE ledger_balances SET points = -1")
    assert filled.balance(pseudonym(1)) == 20


def _snapshot(store: LedgerStore) -> list[list[tuple[object, ...]]]:
    with store.engine.connect() as conn:
        return [
            [tuple(row) for row in conn.exec_driver_sql(f"SELECT * FROM {table}")]
            for table in (
                "ledger_entries",
                "ledger_nodes",
                "ledger_head",
                "ledger_checkpoints",
                "coin_deposits",
                "coin_spent",
            )
        ]


# --- export -----------------------------------------------------------------------------------


def test_export_round_trip(store: LedgerStore, keyring: Keyring, tmp_path: Path) -> None:
    events = economy_events(40, seed=5)
    store.append_many([request(event) for event in events[:20]])
    first = issue_checkpoint(store, keyring, origin=ORIGIN)
    store.append_many([request(event) for event in events[20:]])
    second = issue_checkpoint(store, keyring, origin=ORIGIN)
    path = tmp_path / "ledger.export"
    summary = export(store, path, origin=ORIGIN, chunk=7)
    assert (summary.tree_size, summary.entries, summary.checkpoints) == (
        len(events),
        len(events),
        2,
    )
    reader = ExportReader(path)
    assert (reader.origin, reader.tree_size) == (ORIGIN, len(events))
    assert reader.checkpoints == [first.note, second.note]
    exported = [data for chunk in reader.chunks() for data in chunk]
    assert exported == [item.data for item in store.entries(0, len(events))]
    balances = dict(reader.balances())
    assert balances == {who: store.balance(who) for who in balances}
    assert not path.with_name(path.name + ".tmp").exists()


def _read_everything(path: Path) -> None:
    reader = ExportReader(path)
    for _ in reader.chunks():
        pass
    list(reader.balances())


def test_export_reader_refuses_malformed_files(tmp_path: Path) -> None:
    path = tmp_path / "ledger.export"
    with path.open("wb") as out:
        write_export(
            out,
            origin=ORIGIN,
            tree_size=3,
            checkpoints=[b"note\n"],
            entries=[encoded([act(1), act(2), act(3)])],
            balances=[(pseudonym(1), 5)],
        )
    whole = path.read_bytes()
    ExportReader(path)
    for broken in (
        b"other format\n" + whole[whole.index(b"\n") + 1 :],
        whole[: len(whole) // 2],  # truncated in the entries
        whole[:-3],  # truncated end line
        whole.replace(b"# end 1 3 1", b"# end 1 2 1"),
        whole + b"more",
    ):
        path.write_bytes(broken)
        with pytest.raises(ExportError):
            _read_everything(path)
    with pytest.raises(ExportError):
        ExportReader(tmp_path / "missing.export")
