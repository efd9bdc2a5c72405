-- Idempotency keys (IETF httpapi Idempotency-Key draft): the first answer to a POST, kept 24 hours
-- for replays, per caller credential (a hash of its Authorization header) and key. Recorded in
-- the transaction of the request's own effect.
CREATE TABLE idempotency_keys (
    scope       text NOT NULL,
    key         text NOT NULL,
    fingerprint bytea NOT NULL,
    status      smallint NOT NULL,
    body        bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
