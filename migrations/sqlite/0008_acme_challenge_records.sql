-- certkeeper schema version 8: challenge records that outlive a crash; what a failure said.

-- What certkeeper made visible to an ACME CA to answer a challenge: a DNS-01 TXT record
-- ('txt': name and value) or an HTTP-01 token ('token': the token in `name`, no value). A row
-- is written before the record is published and deleted once it is withdrawn, so a record that
-- a crash, a kill or the shutdown deadline left behind is found and withdrawn at the next start
-- when its order (`certificate_id`, `order_url`) is no longer in `acme_orders`. There is no
-- foreign key: the row must outlive its order and its certificate until the record is gone.
-- One record may belong to two orders (a CA reusing an authorization): one row each, and the
-- record is withdrawn only with the last of them.
CREATE TABLE acme_challenge_records (
    kind           TEXT NOT NULL,
    name           TEXT NOT NULL,
    value          TEXT NOT NULL,
    certificate_id TEXT NOT NULL,
    order_url      TEXT NOT NULL,
    published_at   INTEGER NOT NULL,
    PRIMARY KEY (kind, name, value, certificate_id, order_url)
);
CREATE INDEX acme_challenge_records_certificate ON acme_challenge_records (certificate_id);

-- What the last failed attempt said ('awaiting-records', 'transient', 'refused'): it picks the
-- retry ladder (validation records, a short one, the renewal backoff). NULL for failures
-- recorded before this version, which keep the ladder they had.
ALTER TABLE certificates ADD COLUMN renewal_failure_kind TEXT;
