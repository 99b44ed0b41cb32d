-- The SQL surface of pg_token_cleanup, as pg_regress runs it (cargo pgrx regress pg15). This file
-- runs first, in a fresh database: the extension, two application roles and their tables.
CREATE EXTENSION pg_token_cleanup;
-- Roles are cluster-wide and outlive the database between runs.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'regress_app') THEN
        CREATE ROLE regress_app;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'regress_other') THEN
        CREATE ROLE regress_other;
    END IF;
END $$;
CREATE TABLE public.refresh_tokens (
    id         bigint PRIMARY KEY,
    user_id    bigint NOT NULL,
    revoked    boolean NOT NULL DEFAULT false,
    expires_at timestamptz NOT NULL
);
-- 30 expired, 10 revoked, 60 live.
INSERT INTO public.refresh_tokens
SELECT g, g % 7, g BETWEEN 31 AND 40,
       CASE WHEN g <= 30 THEN now() - interval '1 day' ELSE now() + interval '1 day' END
  FROM generate_series(1, 100) g;
ANALYZE public.refresh_tokens;
GRANT SELECT, DELETE ON public.refresh_tokens TO regress_app;
CREATE TABLE public.other_sessions (id bigint PRIMARY KEY, expires_at timestamptz NOT NULL);
GRANT SELECT, DELETE ON public.other_sessions TO regress_other;
CREATE VIEW public.token_view AS SELECT * FROM public.refresh_tokens;
