-- Bearer tokens: one made at registration for each user, shown once, stored only as its
-- SHA-256 (a token is 256 random bits: a slow hash would add nothing).
CREATE TABLE api_tokens (
    token_hash bytea PRIMARY KEY,
    user_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX api_tokens_user_id ON api_tokens (user_id);
