"""The acts catalogue: parsing, publication as ledger entries, validity and caps."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ledger.catalogue import (
    DEFAULT_CATALOGUE,
    ActNotAllowed,
    ActOutsideValidity,
    ActTypeUnknown,
    CatalogueCache,
    CatalogueError,
    current_catalogue,
    load_catalogue,
    parse_catalogue,
    publish_catalogue,
)
from ledger.entries import CatalogueChanged
from ledger.store import LedgerStore
from tests.ledger.test_store import ledger_engine

RULE = {
    "points": 2,
    "max_per_day": 2,
    "max_per_month": 3,
    "partners": ["transit"],
    "valid_from": "2026-01-01",
    "valid_until": "2027-01-01",
}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LedgerStore]:
    engine = ledger_engine(f"sqlite:///{tmp_path / 'ledger.db'}", tmp_path)
    yield LedgerStore(engine)
    engine.dispose()


def test_default_catalogue_has_the_four_act_types() -> None:
    catalogue = load_catalogue(DEFAULT_CATALOGUE)
    assert set(catalogue.rules) == {
        "tram_ride",
        "bike_share_trip",
        "recycling_dropoff",
        "energy_saving_month",
    }
    assert "demo-transit" in catalogue.rule("tram_ride").partners
    document = json.loads(catalogue.document())
    assert parse_catalogue(document, 1).document() == catalogue.document()


@pytest.mark.parametrize(
    "broken",
    [
        {},
        {"acts": {}},
        {"acts": {"tram_ride": {**RULE, "points": 0}}},
        {"acts": {"tram_ride": {**RULE, "points": True}}},
        {"acts": {"tram_ride": {**RULE, "max_per_day": 9}}},
        {"acts": {"tram_ride": {**RULE, "partners": "transit"}}},
        {"acts": {"tram_ride": {**RULE, "valid_until": "2025-01-01"}}},
        {"acts": {"tram_ride": {**RULE, "valid_from": "someday"}}},
        {"acts": {"tram_ride": {**RULE, "colour": "green"}}},
        {"acts": {"Tram Ride": RULE}},
        {"acts": {"tram_ride": RULE}, "other": 1},
    ],
)
def test_malformed_catalogues_are_refused(broken: dict[str, object]) -> None:
    with pytest.raises(CatalogueError):
        parse_catalogue(broken, 1)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogueError):
        load_catalogue(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[acts\n")
    with pytest.raises(CatalogueError):
        load_catalogue(bad)


def test_rules_check_partner_and_validity() -> None:
    rule = parse_catalogue({"acts": {"tram_ride": RULE}}, 1).rule("tram_ride")
    rule.check("transit", datetime(2026, 5, 1, tzinfo=UTC))
    with pytest.raises(ActNotAllowed):
        rule.check("bikeshare", datetime(2026, 5, 1, tzinfo=UTC))
    with pytest.raises(ActOutsideValidity):
        rule.check("transit", datetime(2025, 12, 31, 23, 59, tzinfo=UTC))
    with pytest.raises(ActOutsideValidity):
        rule.check("transit", datetime(2027, 1, 1, tzinfo=UTC))
    with pytest.raises(ActTypeUnknown):
        parse_catalogue({"acts": {"tram_ride": RULE}}, 1).rule("bike_share_trip")


def test_every_change_is_a_ledger_entry(store: LedgerStore) -> None:
    cache = CatalogueCache(store)
    with pytest.raises(CatalogueError):
        cache.get()
    first = publish_catalogue(store, parse_catalogue({"acts": {"tram_ride": RULE}}, 1))
    assert first.version == 1
    assert publish_catalogue(store, first).version == 1  # unchanged: nothing appended
    assert store.head().size == 1
    assert cache.get().version == 1

    changed = parse_catalogue({"acts": {"tram_ride": {**RULE, "points": 3}}}, 1)
    assert publish_catalogue(store, changed).version == 2
    assert store.head().size == 2
    logged = store.entry(1)
    assert logged is not None
    assert isinstance(logged.entry.event, CatalogueChanged)
    assert logged.entry.event.document == changed.document()
    assert cache.get().rule("tram_ride").points == 3
    current = current_catalogue(store)
    assert current is not None
    assert current.version == 2
