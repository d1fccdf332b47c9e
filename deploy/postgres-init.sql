-- The ledger lives in its own database, so the identity store and the ledger never share tables.
CREATE DATABASE ledger OWNER nicecard;
