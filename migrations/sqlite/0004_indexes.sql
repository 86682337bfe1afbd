-- Indexes earn their place by a query that needs them: every index is one more page written
-- (to the WAL, then again by the checkpoint) with every certificate stored.

-- Every query on expiry times is about issued certificates ("the earliest expiry", "expired
-- but still marked issued", "expiring within N days"). Keyed on status first, the earliest
-- issued expiry is one index seek; on not_after alone it was a scan of every issued row,
-- which the scheduler paid whenever the inventory changed.
DROP INDEX certificates_not_after;
CREATE INDEX certificates_expiry ON certificates (status, not_after);

-- No query looks versions up by serial. Serials are random, so each insert dirtied a random
-- page of this index: about 4 KiB written twice per certificate, for nothing.
DROP INDEX versions_serial;
