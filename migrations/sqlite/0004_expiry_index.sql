-- Every query on expiry times is about issued certificates ("the earliest expiry", "expired
-- but still marked issued", "expiring within N days"). Keyed on status first, the earliest
-- issued expiry is one index seek; on not_after alone it was a scan of every issued row,
-- which the scheduler paid whenever the inventory changed.
DROP INDEX certificates_not_after;
CREATE INDEX certificates_expiry ON certificates (status, not_after);
