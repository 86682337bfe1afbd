-- certkeeper schema version 3: ACME issuance.

-- One account per configured ACME issuer. The credentials hold the account's private key, so
-- they are sealed like every other key (record id "acme-account/<issuer>").
-- `contact` is the JSON array the CA has; `updated_at` changes with the contact or the key.
CREATE TABLE acme_accounts (
    issuer      TEXT PRIMARY KEY,
    directory   TEXT NOT NULL,
    account_url TEXT NOT NULL,
    contact     TEXT NOT NULL DEFAULT '[]',
    key_kid     TEXT NOT NULL,
    key_blob    BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

-- The order in flight for a certificate. Written before any challenge is answered, with the
-- certificate's new private key (sealed, record id "acme-order/<certificate id>"), so that a
-- restart resumes the same order instead of starting another.
CREATE TABLE acme_orders (
    certificate_id TEXT PRIMARY KEY REFERENCES certificates(id) ON DELETE CASCADE,
    issuer         TEXT NOT NULL,
    order_url      TEXT NOT NULL,
    key_kid        TEXT NOT NULL,
    key_blob       BLOB NOT NULL,
    created_at     INTEGER NOT NULL
);

-- How a public certificate proves control of its domains ('dns' or 'http'), and when a
-- certificate waiting for validation gives up (validation-timed-out).
ALTER TABLE certificates ADD COLUMN validation_method TEXT;
ALTER TABLE certificates ADD COLUMN validation_deadline INTEGER;

-- The CA's suggested renewal window for the current version (ACME renewal information, RFC
-- 9773), as JSON: window, the point chosen in it, when to ask again. NULL when the CA has none.
ALTER TABLE certificates ADD COLUMN renewal_info TEXT;
