-- The role the functions (booking, roll-up, alerts) work as: rows only, no DDL. Migrations run as
-- a separate role (the database owner, `capctl db migrate`), so a compromised or buggy function
-- can read and write what the engine keeps but cannot create, alter or drop anything.
--
-- capacity_app is a group role without login: give the functions' login user (the one in the
-- DATABASE_SECRET_ARN secret) membership, e.g. `GRANT capacity_app TO capacity_lambda;`, and no
-- other rights. Roles are cluster-wide, so it is created only when missing (idempotent).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'capacity_app') THEN
        CREATE ROLE capacity_app NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT;
    END IF;
END
$$;

-- No schema or database of its own making (PostgreSQL 15+ already refuses CREATE on public to
-- PUBLIC; older servers did not). TEMP stays: harmless, and some drivers use it.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
DO $$
BEGIN
    EXECUTE format('REVOKE CREATE ON DATABASE %I FROM PUBLIC', current_database());
    EXECUTE format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO capacity_app', current_database());
END
$$;

GRANT USAGE ON SCHEMA public TO capacity_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO capacity_app;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO capacity_app;
-- The migrations' own bookkeeping is not the functions' business.
REVOKE INSERT, UPDATE, DELETE ON schema_migrations FROM capacity_app;
-- The capacity history is append-only (003): the functions may add to it, never rewrite it.
DO $$
BEGIN
    IF to_regclass('public.capacity_changes') IS NOT NULL THEN
        REVOKE UPDATE, DELETE ON capacity_changes FROM capacity_app;
    END IF;
END
$$;

-- Tables and sequences that later migrations create (as the migrating role) are the functions'
-- to use as well, without each migration repeating these grants.
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO capacity_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO capacity_app;
