-- PgBouncer's password lookup (auth_query), installed in each pooled database.
-- Reading pg_authid needs a superuser, so the function is owned by postgres
-- and runs as it; only selfbase_pgbouncer may call it, and it never returns
-- the verifier of a superuser, a replication role or an expired login.
BEGIN;
CREATE SCHEMA IF NOT EXISTS pgbouncer AUTHORIZATION postgres;
REVOKE ALL ON SCHEMA pgbouncer FROM PUBLIC;
GRANT USAGE ON SCHEMA pgbouncer TO selfbase_pgbouncer;
-- A set: no row at all for an unknown or hidden login (a record would be one row of NULLs).
DROP FUNCTION IF EXISTS pgbouncer.user_lookup(text);
CREATE FUNCTION pgbouncer.user_lookup(i_username text)
RETURNS TABLE (uname text, phash text)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT a.rolname::text, a.rolpassword
      FROM pg_catalog.pg_authid a
     WHERE a.rolname = i_username
       AND a.rolcanlogin AND NOT a.rolsuper AND NOT a.rolreplication AND NOT a.rolbypassrls
       AND (a.rolvaliduntil IS NULL OR a.rolvaliduntil > pg_catalog.now())
$$;
ALTER FUNCTION pgbouncer.user_lookup(text) OWNER TO postgres;
REVOKE ALL ON FUNCTION pgbouncer.user_lookup(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgbouncer.user_lookup(text) TO selfbase_pgbouncer;
COMMENT ON FUNCTION pgbouncer.user_lookup(text) IS 'selfbase pgbouncer lookup v1';
COMMIT;
