-- certkeeper schema version 7: account key rollover that cannot lose the account.

-- The next key of an issuer's ACME account, stored (in credentials sealed as
-- "acme-account-pending/<issuer>") before the CA is asked to switch to it. Storing the
-- account's credentials removes it. A row left here means the rollover's outcome is unknown
-- (no answer from the CA, a crash, a failed write after the switch): the next use of the
-- account asks the CA which key it has.
CREATE TABLE acme_pending_keys (
    issuer     TEXT PRIMARY KEY REFERENCES acme_accounts(issuer) ON DELETE CASCADE,
    key_kid    TEXT NOT NULL,
    key_blob   BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
