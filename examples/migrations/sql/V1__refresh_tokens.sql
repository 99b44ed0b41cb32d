-- The application's table (IF NOT EXISTS: this example is applied twice by its test).
CREATE TABLE IF NOT EXISTS refresh_tokens (
    id         bigserial PRIMARY KEY,
    user_id    bigint NOT NULL,
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz
);
CREATE INDEX IF NOT EXISTS refresh_tokens_expires_at_idx ON refresh_tokens (expires_at);
