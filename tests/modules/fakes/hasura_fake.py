"""A stateful fake of Hasura GraphQL Engine v2's metadata API (POST /v1/metadata), for contract tests.

What it mimics, from Hasura's documentation and error messages:
- the admin secret in X-Hasura-Admin-Secret; 401 with code access-denied when it is wrong, or missing while no
  unauthorized role applies; with a JWT secret and an unauthorized role configured, a request without the secret
  (and without a token) runs as that role, which the metadata API refuses: 400 access-denied "restricted access :
  admin only" at $.args (server/src-lib/Hasura/App.hs, MetadataApiAuthorization);
- export_metadata version 2: {resource_version, metadata} (metadata format version 3), in Hasura's export form:
  custom column names both as custom_column_names and column_config, default permission values left out;
- replace_metadata version 2 with args {metadata, allow_inconsistent_metadata} and a top-level resource_version:
  409 {path, error, code: conflict} when it is stale; when the new metadata is inconsistent and inconsistency is not
  allowed, 400 {path: $.args, error, code: unexpected, internal: [objects]} and nothing is stored, where "internal"
  is sent only with HASURA_GRAPHQL_ADMIN_INTERNAL_ERRORS (Hasura's default: true) or dev mode; the new metadata
  is built (and found inconsistent) before the resource_version is compared, so an inconsistent write with a stale
  version gets 400, not 409; every accepted write increments resource_version;
- get_inconsistent_metadata: tables (and array relationship targets) that are not in the configured database, and
  permission columns that the database table does not have; tracked functions the database lacks, whose returned
  table is not tracked, or with a permission for a role that has no select permission on that table
  (server/src-lib/Hasura/Function/API.hs, runCreateFunctionPermission, states the last rule for the single call);
- RESTified endpoints (rest_endpoints with query_collections): an endpoint whose collection or query is missing,
  whose URL names a variable its query does not declare, that shares a URL and method with another, or whose
  query uses a root field the tracked tables and functions do not give (default names: schema_table,
  schema_table_by_pk, schema_table_aggregate, schema_function; custom root fields as configured) is inconsistent;
- actions and custom types (actions, custom_types): custom type names unique, objects of scalar and enum fields,
  input objects of scalars, enums and input objects, an action's arguments of scalars (built-in or the database's),
  enums or input objects and its output an object type, its name not a root field already, each role's permission
  once (server/src-lib/Hasura/RQL/DDL/CustomTypes.hs and Action.hs), are inconsistent otherwise;
- function objects in replace_metadata parse as FunctionMetadata: function, configuration (custom_name,
  custom_root_fields, exposed_as query or mutation, session_argument), permissions [{role}], comment;
- pg_track_table (already-tracked, not-exists), pg_set_table_customization, pg_create_object_relationship and
  pg_create_array_relationship (already-exists; a manual relationship to an untracked table is refused): the calls
  auth makes on every start and the auth role makes for the tenant relationship (table_command).

The metadata it starts with is what auth's own requests build (auth_track_requests, apply_auth_metadata).
Tests configure the database (db_tables), interleave concurrent writers (before_write) or database changes after
a write (after_replace), and read the request log (requests)."""

from __future__ import annotations

import copy
import json
import re
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


# GraphQL's own scalars (Hasura adds ID to the four its custom types documentation lists), and the database's
# scalars an action's argument may use (Hasura looks them up in the source's types; these are PostgreSQL's common
# ones).
BUILTIN_SCALARS = ("Int", "Float", "String", "Boolean", "ID")
PG_SCALARS = {"uuid", "timestamptz", "timestamp", "date", "jsonb", "json", "numeric", "bigint", "smallint",
              "citext", "text", "bpchar", "bytea"}


def _base_type(ref):
    """The named type inside a GraphQL type reference ([String!]! -> String)."""
    return re.sub(r"[\[\]!]", "", str(ref or ""))


ROOT_FIELDS = ("select", "select_by_pk", "select_aggregate", "select_stream", "insert", "insert_one", "update",
               "update_by_pk", "update_many", "delete", "delete_by_pk")


def _auth_track(name, custom, singular, columns, objects=(), arrays=(), **top):
    """One of auth's pg_track_table requests: the 9 root fields auth sets, its column names, and the relationships
    it creates afterwards (sent inside args, where Hasura's parser does not read them)."""
    plural, single = custom[0].upper() + custom[1:], singular[0].upper() + singular[1:]
    fields = {"select": custom, "select_by_pk": singular, "select_aggregate": custom + "Aggregate",
              "insert": "insert" + plural, "insert_one": "insert" + single, "update": "update" + plural,
              "update_by_pk": "update" + single, "delete": "delete" + plural, "delete_by_pk": "delete" + single}
    args = {"source": "default", "table": {"schema": "auth", "name": name},
            "configuration": {"custom_name": custom, "custom_root_fields": fields, "custom_column_names": columns}}
    if objects:
        args["object_relationships"] = [{"name": n, "using": {"foreign_key_constraint_on": c}} for n, c in objects]
    if arrays:
        args["array_relationships"] = [
            {"name": n, "using": {"foreign_key_constraint_on": {"table": {"schema": "auth", "name": t},
                                                                "columns": [c]}}} for n, t, c in arrays]
    return dict(top, type="pg_track_table", args=args)


_CREATED, _UPDATED, _USER = {"created_at": "createdAt"}, {"updated_at": "updatedAt"}, {"user_id": "userId"}


def auth_track_requests():
    """What auth sends Hasura on every start: authTables() in nhost/nhost services/auth/go/migrations/hasura.go,
    applied by internal/lib/hasura/metadata (ApplyMetadata). No permissions: auth creates none. is_enum is sent
    beside args, not in them, so Hasura never reads it."""
    return [
        _auth_track("provider_requests", "authProviderRequests", "authProviderRequest",
                    {"id": "id", "options": "options"}),
        _auth_track("refresh_token_types", "authRefreshTokenTypes", "authRefreshTokenType",
                    {"value": "value", "comment": "comment"},
                    arrays=[("refreshTokens", "refresh_tokens", "type")], is_enum=True),
        _auth_track("refresh_tokens", "authRefreshTokens", "authRefreshToken",
                    {"refresh_token_hash": "refreshTokenHash", "expires_at": "expiresAt", **_CREATED, **_USER},
                    objects=[("user", "user_id")]),
        _auth_track("roles", "authRoles", "authRole", {"role": "role"},
                    arrays=[("userRoles", "user_roles", "role"), ("usersByDefaultRole", "users", "default_role")]),
        _auth_track("user_providers", "authUserProviders", "authUserProvider",
                    {"id": "id", "access_token": "accessToken", "refresh_token": "refreshToken",
                     "provider_id": "providerId", "provider_user_id": "providerUserId", **_CREATED, **_UPDATED,
                     **_USER},
                    objects=[("user", "user_id"), ("provider", "provider_id")]),
        _auth_track("user_roles", "authUserRoles", "authUserRole", {"id": "id", "role": "role", **_CREATED, **_USER},
                    objects=[("user", "user_id"), ("roleByRole", "role")]),
        _auth_track("users", "users", "user",
                    {"id": "id", "last_seen": "lastSeen", "disabled": "disabled", "display_name": "displayName",
                     "avatar_url": "avatarUrl", "locale": "locale", "email": "email", "phone_number": "phoneNumber",
                     "password_hash": "passwordHash", "email_verified": "emailVerified",
                     "phone_number_verified": "phoneNumberVerified", "new_email": "newEmail",
                     "otp_method_last_used": "otpMethodLastUsed", "otp_hash": "otpHash",
                     "otp_hash_expires_at": "otpHashExpiresAt", "default_role": "defaultRole",
                     "is_anonymous": "isAnonymous", "totp_secret": "totpSecret", "active_mfa_type": "activeMfaType",
                     "ticket": "ticket", "ticket_expires_at": "ticketExpiresAt",
                     "webauthn_current_challenge": "currentChallenge", **_CREATED, **_UPDATED},
                    objects=[("defaultRoleByRole", "default_role")],
                    arrays=[("userProviders", "user_providers", "user_id"), ("roles", "user_roles", "user_id"),
                            ("refreshTokens", "refresh_tokens", "user_id"),
                            ("securityKeys", "user_security_keys", "user_id"),
                            ("oauth2AuthRequests", "oauth2_auth_requests", "user_id"),
                            ("oauth2RefreshTokens", "oauth2_refresh_tokens", "user_id")]),
        _auth_track("providers", "authProviders", "authProvider", {"id": "id"},
                    arrays=[("userProviders", "user_providers", "provider_id")]),
        _auth_track("user_security_keys", "authUserSecurityKeys", "authUserSecurityKey",
                    {"id": "id", "credential_id": "credentialId", "credential_public_key": "credentialPublicKey",
                     **_USER},
                    objects=[("user", "user_id")]),
        _auth_track("oauth2_clients", "authOauth2Clients", "authOauth2Client",
                    {"client_id": "clientId", "client_secret_hash": "clientSecretHash",
                     "redirect_uris": "redirectUris", "scopes": "scopes", "type": "type", "metadata": "metadata",
                     "metadata_document_fetched_at": "metadataDocumentFetchedAt", "created_by": "createdBy",
                     **_CREATED, **_UPDATED},
                    objects=[("createdByUser", "created_by")],
                    arrays=[("authRequests", "oauth2_auth_requests", "client_id"),
                            ("oauth2RefreshTokens", "oauth2_refresh_tokens", "client_id")]),
        _auth_track("oauth2_auth_requests", "authOauth2AuthRequests", "authOauth2AuthRequest",
                    {"id": "id", "client_id": "clientId", "scopes": "scopes", "redirect_uri": "redirectUri",
                     "state": "state", "nonce": "nonce", "response_type": "responseType",
                     "code_challenge": "codeChallenge", "code_challenge_method": "codeChallengeMethod",
                     "resource": "resource", "done": "done", "auth_time": "authTime", "expires_at": "expiresAt",
                     **_CREATED, **_USER},
                    objects=[("client", "client_id"), ("user", "user_id")],
                    arrays=[("authorizationCodes", "oauth2_authorization_codes", "auth_request_id"),
                            ("refreshTokens", "oauth2_refresh_tokens", "auth_request_id")]),
        _auth_track("oauth2_authorization_codes", "authOauth2AuthorizationCodes", "authOauth2AuthorizationCode",
                    {"id": "id", "code_hash": "codeHash", "auth_request_id": "authRequestId",
                     "expires_at": "expiresAt", **_CREATED},
                    objects=[("authRequest", "auth_request_id")]),
        _auth_track("oauth2_refresh_tokens", "authOauth2RefreshTokens", "authOauth2RefreshToken",
                    {"id": "id", "token_hash": "tokenHash", "auth_request_id": "authRequestId",
                     "client_id": "clientId", "scopes": "scopes", "expires_at": "expiresAt", **_CREATED, **_USER},
                    objects=[("authRequest", "auth_request_id"), ("client", "client_id"), ("user", "user_id")]),
    ]


def apply_auth_metadata(call):
    """auth's ApplyMetadata through call(body) -> (status, answer): track each table (on already-tracked, set its
    customization instead), then create each relationship the table does not have yet, skipping already-exists."""
    requests = auth_track_requests()
    for request in requests:
        status, answer = call(request)
        if status == 400 and answer.get("code") == "already-tracked":
            status, answer = call({"type": "pg_set_table_customization",
                                   "args": {k: request["args"][k] for k in ("source", "table", "configuration")}})
        if status != 200:
            raise AssertionError("auth's metadata failed: %s" % answer)
    for request in requests:
        args = request["args"]
        for kind in ("object", "array"):
            for rel in args.get(kind + "_relationships", []):
                using = rel["using"]["foreign_key_constraint_on"]
                if kind == "object":
                    using = [using]
                status, answer = call({"type": "pg_create_%s_relationship" % kind, "args": {
                    "source": args["source"], "table": args["table"], "name": rel["name"],
                    "using": {"foreign_key_constraint_on": using}}})
                if status != 200 and answer.get("code") != "already-exists":
                    raise AssertionError("auth's relationship failed: %s" % answer)


def empty_metadata():
    """A fresh Hasura's metadata: the default source from HASURA_GRAPHQL_DATABASE_URL, no tables."""
    return {
        "version": 3,
        "sources": [
            {
                "name": "default",
                "kind": "postgres",
                "tables": [],
                "configuration": {
                    "connection_info": {
                        "database_url": {"from_env": "HASURA_GRAPHQL_DATABASE_URL"},
                        "isolation_level": "read-committed",
                        "pool_settings": {"connection_lifetime": 600, "idle_timeout": 180, "max_connections": 50,
                                          "retries": 1},
                        "use_prepared_statements": True,
                    }
                },
            }
        ],
    }


def initial_metadata():
    """The metadata once auth has started: a fresh Hasura's, with auth's tables applied by auth's own requests."""
    metadata = empty_metadata()
    apply_auth_metadata(lambda body: table_command(metadata, None, body))
    metadata["inherited_roles"] = [{"role_name": "member", "role_set": ["user"]}]
    return metadata


def _error(status, code, error, path="$.args"):
    return status, {"path": path, "error": error, "code": code}


def _columns(db_tables, ref):
    """The table's columns when the test configured them, else None (any column exists)."""
    return None if db_tables is None else db_tables.get(ref)


def _root_field_clash(source):
    seen = {}
    for table in source.get("tables", []):
        fields = (table.get("configuration") or {}).get("custom_root_fields") or {}
        for name in fields.values():
            if name and name in seen and seen[name] != table["table"]:
                return name
            seen[name] = table["table"]
    return None


def table_command(metadata, db_tables, body):
    """pg_track_table, pg_set_table_customization and pg_create_{object,array}_relationship on metadata (changed in
    place only when accepted), as Hasura's metadata API answers them (Hasura/RQL/DDL/Schema/Table.hs,
    Relationship.hs). db_tables: {(schema, name): columns or None}, or None when every table exists."""
    kind, args = body.get("type"), body.get("args")
    if not isinstance(args, dict) or not isinstance(args.get("table"), (dict, str)):
        return _error(400, "parse-failed", 'key "table" not found')
    source = next((s for s in metadata["sources"] if s["name"] == args.get("source", "default")), None)
    if source is None:
        return _error(400, "not-exists", 'source with name "%s" does not exist' % args.get("source"))
    ref = _ref(args["table"])
    qualified = '"%s.%s"' % ref
    tracked = next((t for t in source["tables"] if _ref(t["table"]) == ref), None)
    config = args.get("configuration") or {}
    unknown = set(config.get("custom_root_fields") or {}) - set(ROOT_FIELDS)
    if unknown:
        return _error(400, "parse-failed", "unexpected custom root fields %s" % sorted(unknown),
                      "$.args.configuration.custom_root_fields")
    columns = _columns(db_tables, ref)
    missing = [c for c in (config.get("custom_column_names") or {}) if columns is not None and c not in columns]
    if missing:
        return _error(400, "not-exists", 'column "%s" does not exist in table %s' % (missing[0], qualified))
    new = copy.deepcopy(source)
    if kind == "pg_track_table":
        if tracked is not None:
            return _error(400, "already-tracked", "view/table already tracked : %s" % qualified)
        if db_tables is not None and ref not in db_tables:
            return _error(400, "not-exists", "no such table/view exists in source: %s" % qualified)
        entry = {"table": {"schema": ref[0], "name": ref[1]}}
        if config:
            entry["configuration"] = copy.deepcopy(config)
        if args.get("is_enum"):
            entry["is_enum"] = True
        new["tables"].append(entry)
    elif tracked is None:
        return _error(400, "not-exists", "table %s does not exist in source: %s" % (qualified, source["name"]))
    elif kind == "pg_set_table_customization":
        next(t for t in new["tables"] if _ref(t["table"]) == ref)["configuration"] = copy.deepcopy(config)
    else:
        status, answer = _relationship(new, tracked, ref, args, kind, db_tables)
        if status != 200:
            return status, answer
    clash = _root_field_clash(new)
    if clash:
        return _error(400, "unexpected", "cannot continue due to new inconsistent metadata: root field %s is "
                                         "defined more than once" % clash)
    source.clear()
    source.update(new)
    return 200, {"message": "success"}


def _relationship(source, tracked, ref, args, kind, db_tables):
    name = args.get("name")
    fields = [r["name"] for k in ("object_relationships", "array_relationships") for r in tracked.get(k, [])]
    if name in fields or (_columns(db_tables, ref) or []).count(name):
        return _error(400, "already-exists", 'field "%s" already exists in table "%s.%s"' % ((name,) + ref))
    using = args.get("using") or {}
    manual = using.get("manual_configuration")
    fkey = using.get("foreign_key_constraint_on")
    if manual:
        remote, mapping = _ref(manual.get("remote_table")), manual.get("column_mapping") or {}
        if not any(_ref(t["table"]) == remote for t in source["tables"]):
            return _error(400, "unexpected", "cannot continue due to new inconsistent metadata: in table "
                                             '"%s.%s": in relationship "%s": table "%s.%s" is not tracked'
                                             % (ref + (name,) + remote))
        for side, cols in ((ref, list(mapping)), (remote, list(mapping.values()))):
            known = _columns(db_tables, side)
            if known is not None and [c for c in cols if c not in known]:
                return _error(400, "unexpected", 'cannot continue due to new inconsistent metadata: column "%s" '
                                                 'does not exist in "%s.%s"'
                                                 % (([c for c in cols if c not in known][0],) + side))
        stored = {"manual_configuration": copy.deepcopy(manual)}
    elif kind == "pg_create_array_relationship" and isinstance(fkey, dict) and "table" in fkey:
        cols = fkey.get("columns") or ([fkey["column"]] if "column" in fkey else [])
        stored = {"foreign_key_constraint_on": {"table": fkey["table"], "column": cols[0]} if len(cols) == 1 else
                  {"table": fkey["table"], "columns": cols}}
    elif kind == "pg_create_object_relationship" and fkey:
        cols = [fkey] if isinstance(fkey, str) else list(fkey)
        stored = {"foreign_key_constraint_on": cols[0] if len(cols) == 1 else cols}
    else:
        return _error(400, "parse-failed", "this fake takes foreign_key_constraint_on or manual_configuration",
                      "$.args.using")
    table = next(t for t in source["tables"] if _ref(t["table"]) == ref)
    table.setdefault(kind[len("pg_create_"):-len("_relationship")] + "_relationships", []).append(
        {"name": name, "using": stored})
    return 200, None


ISOLATION_LEVELS = ("read-committed", "repeatable-read", "serializable")
TABLE_COMMANDS = ("pg_track_table", "pg_set_table_customization", "pg_create_object_relationship",
                  "pg_create_array_relationship")


def _connection_info_error(info):
    """What Hasura's FromJSON PostgresSourceConnInfo refuses (Connection/Settings.hs), or None."""
    if not isinstance(info, dict) or "database_url" not in info:
        return 'key "database_url" not found'
    if not isinstance(info.get("use_prepared_statements", False), bool):
        return "parsing Bool failed, expected Boolean"
    if info.get("isolation_level", "read-committed") not in ISOLATION_LEVELS:
        return "expected read-committed, repeatable-read or serializable"
    return None


def _export_form(metadata):
    """How Hasura exports what was stored."""
    metadata = copy.deepcopy(metadata)
    for source in metadata.get("sources", []):
        info = source.get("configuration", {}).get("connection_info")
        if isinstance(info, dict):
            # non-optional fields of PostgresSourceConnInfo: always exported, with the parser's defaults
            info.setdefault("use_prepared_statements", False)
            info.setdefault("isolation_level", "read-committed")
        for table in source.get("tables", []):
            config = table.get("configuration")
            if config:
                names = dict(config.get("custom_column_names") or {})
                columns = config.get("column_config") or {}
                for column, custom in names.items():
                    columns.setdefault(column, {}).setdefault("custom_name", custom)
                for column, conf in columns.items():
                    if conf.get("custom_name"):
                        names[column] = conf["custom_name"]
                if columns:
                    config["column_config"], config["custom_column_names"] = columns, names
            for kind in ("select", "insert", "update", "delete"):
                for perm in table.get(kind + "_permissions", []):
                    body = perm["permission"]
                    for key, default in (("allow_aggregations", False), ("backend_only", False), ("set", {}),
                                         ("computed_fields", [])):
                        if key in body and body[key] == default:
                            del body[key]
    return metadata


def _top_fields(query):
    """The root fields of a GraphQL operation (the names at selection depth 1, after any alias)."""
    depth, fields, text = 0, [], re.sub(r"\([^()]*\)", "", query)  # arguments hold no root fields
    for token in re.findall(r"[{}]|[A-Za-z_]\w*\s*:?", text):
        if token == "{":
            depth += 1
        elif token == "}":
            depth -= 1
        elif depth == 1 and not token.rstrip().endswith(":"):
            fields.append(token.strip())
    return fields


def _ref(value):
    if isinstance(value, str):
        return ("public", value)
    return (value.get("schema", "public"), value["name"])


class FakeHasura:
    def __init__(self, admin_secret="fake-admin-secret", db_tables=None, metadata=None, admin_internal_errors=True,
                 dev_mode=False, jwt=False, unauthorized_role=None, db_functions=None):
        self.admin_secret = admin_secret
        # HASURA_GRAPHQL_ADMIN_INTERNAL_ERRORS, HASURA_GRAPHQL_DEV_MODE, HASURA_GRAPHQL_JWT_SECRET set,
        # HASURA_GRAPHQL_UNAUTHORIZED_ROLE
        self.admin_internal_errors = admin_internal_errors
        self.dev_mode = dev_mode
        self.jwt = jwt
        self.unauthorized_role = unauthorized_role
        self.metadata = metadata or initial_metadata()
        self.resource_version = 1
        # {(schema, name): [columns] or None (any column)}; defaults to every tracked table existing
        self.db_tables = db_tables if db_tables is not None else {
            _ref(t["table"]): None for s in self.metadata["sources"] for t in s.get("tables", [])}
        # {(schema, name): (schema, table) it returns SETOF}
        self.db_functions = db_functions or {}
        self.env = {}  # the server's environment, for {{NAME}} templates in handlers
        self.requests = []
        self.before_write = []  # callables(fake), one popped per write (replace_metadata, pg_*): a concurrent writer
        self.after_replace = []  # callables(fake), one popped after a stored replace_metadata
        self.lock = threading.RLock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.endpoint = "http://127.0.0.1:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    # helpers for tests
    def export(self):
        with self.lock:
            return _export_form(self.metadata)

    def tables(self, source="default"):
        """{"schema.name": table object as exported}."""
        for s in self.export()["sources"]:
            if s["name"] == source:
                return dict(("%s.%s" % _ref(t["table"]), t) for t in s.get("tables", []))
        return {}

    def writes(self):
        return [r for r in self.requests if r["type"] == "replace_metadata"]

    def call(self, body):
        """POST body to /v1/metadata with the admin secret, as a client would: (status, answer)."""
        request = urllib.request.Request(self.endpoint + "/v1/metadata", data=json.dumps(body).encode(), headers={
            "Content-Type": "application/json", "X-Hasura-Admin-Secret": self.admin_secret})
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def concurrent_write(self, change):
        """Someone else (auth, the console) changes the metadata: change(metadata) in place."""
        with self.lock:
            change(self.metadata)
            self.resource_version += 1

    def inconsistent_objects(self, metadata=None):
        metadata = self.metadata if metadata is None else metadata
        found = []
        for source in metadata.get("sources", []):
            for table in source.get("tables", []):
                ref = _ref(table["table"])
                qualified = "%s.%s" % ref
                if ref not in self.db_tables:
                    found.append({"type": "table", "name": "table %s in source %s" % (qualified, source["name"]),
                                  "definition": {"schema": ref[0], "name": ref[1]},
                                  "reason": 'Inconsistent object: no such table/view exists in source: "%s"' % qualified})
                    continue
                for rel in table.get("array_relationships", []):
                    fk = rel["using"].get("foreign_key_constraint_on")
                    if isinstance(fk, dict) and _ref(fk["table"]) not in self.db_tables:
                        found.append({
                            "type": "array_relation",
                            "name": "array_relation %s in table %s in source %s" % (rel["name"], qualified,
                                                                                    source["name"]),
                            "definition": dict(rel, source=source["name"], table=table["table"]),
                            "reason": 'Inconsistent object: in table "%s": in relationship "%s": table "%s.%s" does '
                                      'not exist' % ((qualified, rel["name"]) + _ref(fk["table"]))})
                columns = self.db_tables[ref]
                for kind in ("select", "insert", "update"):
                    for perm in table.get(kind + "_permissions", []):
                        wanted = perm["permission"].get("columns")
                        missing = [c for c in wanted if c not in columns] if columns and isinstance(wanted, list) else []
                        if missing:
                            found.append({
                                "type": kind + "_permission",
                                "name": "%s_permission %s in table %s in source %s" % (kind, perm["role"], qualified,
                                                                                       source["name"]),
                                "definition": dict(perm, source=source["name"], table=table["table"]),
                                "reason": 'Inconsistent object: in table "%s": in permission for role "%s": column '
                                          '"%s" does not exist' % (qualified, perm["role"], missing[0])})
            found.extend(self._function_problems(source))
        found.extend(self._endpoint_problems(metadata))
        found.extend(self._action_problems(metadata))
        return found

    def _action_problems(self, metadata):
        """Custom types and actions, by Hasura's rules (server/src-lib/Hasura/RQL/DDL/CustomTypes.hs,
        validateCustomTypeDefinitions; Action.hs, resolveAction): type names unique; an object's fields of scalars
        and enums only, each named once; an input object's fields of scalars, enums and input objects; an action's
        arguments of scalars (built-in or the database's), enums or input objects; its output an object type; its
        name not a root field already; a role's permission once."""
        types = metadata.get("custom_types") or {}
        named = {kind: [t.get("name") for t in types.get(kind) or []]
                 for kind in ("scalars", "enums", "input_objects", "objects")}
        every = [n for names in named.values() for n in names]
        leaves = set(BUILTIN_SCALARS) | set(named["scalars"]) | set(named["enums"])
        problems = []
        dupes = sorted({n for n in every if every.count(n) > 1})
        if dupes:
            problems.append("validation for the given custom types failed because DuplicateTypeNames %s" % dupes)
        for obj in types.get("objects") or []:
            fields = [f.get("name") for f in obj.get("fields") or []]
            if len(set(fields)) < len(fields):
                problems.append("validation for the given custom types failed because ObjectDuplicateFields %s"
                                % obj.get("name"))
            for field in obj.get("fields") or []:
                base = _base_type(field.get("type"))
                if base in named["objects"]:
                    problems.append("validation for the given custom types failed because ObjectFieldObjectBaseType "
                                    "%s %s %s" % (obj.get("name"), field.get("name"), base))
                elif base not in leaves:
                    problems.append("validation for the given custom types failed because ObjectFieldTypeDoesNotExist "
                                    "%s %s %s" % (obj.get("name"), field.get("name"), base))
        for obj in types.get("input_objects") or []:
            for field in obj.get("fields") or []:
                base = _base_type(field.get("type"))
                if base not in leaves | set(named["input_objects"]):
                    problems.append("validation for the given custom types failed because "
                                    "InputObjectFieldTypeDoesNotExist %s %s %s" % (obj.get("name"), field.get("name"),
                                                                                   base))
        for reason in problems:
            yield {"type": "custom_types", "name": "custom_types", "definition": types,
                   "reason": "Inconsistent object: " + reason}
        inputs = leaves | set(named["input_objects"]) | PG_SCALARS
        roots = self._root_fields(metadata)
        for action in metadata.get("actions") or []:
            definition = action.get("definition") or {}
            obj = {"type": "action", "name": "action %s" % action.get("name"), "definition": action}
            for arg in definition.get("arguments") or []:
                base = _base_type(arg.get("type"))
                if base not in inputs:
                    yield dict(obj, reason='Inconsistent object: in action "%s": the type: "%s" is not defined in '
                                           'custom types or it is not a scalar/enum/input_object'
                                           % (action.get("name"), base))
            output = _base_type(definition.get("output_type"))
            if output not in named["objects"]:
                yield dict(obj, reason='Inconsistent object: in action "%s": the type: "%s" is not an object type '
                                       'defined in custom types' % (action.get("name"), output))
            handler = str(definition.get("handler") or "")
            template = re.match(r"^\{\{([A-Za-z_][A-Za-z0-9_]*)\}\}", handler)
            if template and template.group(1) not in self.env:
                yield dict(obj, reason='Inconsistent object: in action "%s": Environment variable "%s" not set'
                                       % (action.get("name"), template.group(1)))
            elif not template and not re.match(r"^https?://", handler):
                yield dict(obj, reason='Inconsistent object: in action "%s": the handler is not a URL'
                                       % action.get("name"))
            if definition.get("type", "mutation") == "mutation" and \
                    definition.get("kind", "synchronous") not in ("synchronous", "asynchronous"):
                yield dict(obj, reason='Inconsistent object: in action "%s": kind must be synchronous or '
                                       'asynchronous' % action.get("name"))
            if action.get("name") in roots:
                yield dict(obj, reason='Inconsistent object: in action "%s": the root field "%s" already exists'
                                       % (action.get("name"), action.get("name")))
            roles = [perm.get("role") for perm in action.get("permissions") or []]
            for role in sorted({r for r in roles if roles.count(r) > 1}):
                yield dict(obj, reason='Inconsistent object: permission for role "%s" is already defined on "%s"'
                                       % (role, action.get("name")))

    @staticmethod
    def _root_fields(metadata):
        fields = set()
        for source in metadata.get("sources", []):
            for table in source.get("tables", []):
                schema, name = _ref(table["table"])
                base = name if schema == "public" else "%s_%s" % (schema, name)
                config = table.get("configuration") or {}
                base = config.get("custom_name") or base
                fields |= {base, base + "_by_pk", base + "_aggregate", "insert_" + base, "insert_%s_one" % base,
                           "update_" + base, "update_%s_by_pk" % base, "delete_" + base, "delete_%s_by_pk" % base}
                fields |= set(v for v in (config.get("custom_root_fields") or {}).values() if isinstance(v, str))
            for function in source.get("functions", []):
                schema, name = _ref(function["function"])
                base = name if schema == "public" else "%s_%s" % (schema, name)
                fields |= {base, base + "_aggregate"}
        return fields

    def _endpoint_problems(self, metadata):
        collections = {c["name"]: {q["name"]: q["query"] for q in c.get("definition", {}).get("queries", [])}
                       for c in metadata.get("query_collections", [])}
        fields, seen = self._root_fields(metadata), {}
        for endpoint in metadata.get("rest_endpoints", []):
            ref = endpoint.get("definition", {}).get("query", {})
            obj = {"type": "endpoint", "name": "endpoint %s" % endpoint.get("name"), "definition": endpoint}
            query = collections.get(ref.get("collection_name"), {}).get(ref.get("query_name"))
            if query is None:
                yield dict(obj, reason="Inconsistent object: query with name %s not found in collection %s"
                                       % (ref.get("query_name"), ref.get("collection_name")))
                continue
            declared = set(re.findall(r"\$([A-Za-z_]\w*)\s*:", query))
            for segment in endpoint["url"].split("/"):
                if segment.startswith(":") and segment[1:] not in declared:
                    yield dict(obj, reason="Inconsistent object: URL variable %s is not a variable of the query"
                                           % segment[1:])
            for method in endpoint.get("methods", []):
                other = seen.setdefault((endpoint["url"], method), endpoint["name"])
                if other != endpoint["name"]:
                    yield dict(obj, reason="Inconsistent object: endpoint %s conflicts with %s on %s %s"
                                           % (endpoint["name"], other, method, endpoint["url"]))
            for field in _top_fields(query):
                if field not in fields and not field.startswith("__"):
                    yield dict(obj, reason="Inconsistent object: in endpoint %s: field '%s' not found in type: "
                                           "'query_root' or 'mutation_root'" % (endpoint["name"], field))

    def _function_problems(self, source):
        tracked = dict((_ref(t["table"]), t) for t in source.get("tables", []))
        for function in source.get("functions", []):
            ref = _ref(function["function"])
            qualified = "%s.%s" % ref
            obj = {"type": "function", "name": "function %s in source %s" % (qualified, source["name"]),
                   "definition": dict(function, source=source["name"])}
            returns = self.db_functions.get(ref)
            if returns is None:
                yield dict(obj, reason='Inconsistent object: in function "%s": no such function exists' % qualified)
                continue
            if returns not in tracked:
                yield dict(obj, reason='Inconsistent object: in function "%s": the function "%s" cannot be tracked '
                                       'because the function\'s return table "%s.%s" is not tracked'
                                       % ((qualified, qualified) + returns))
                continue
            readers = {p["role"] for p in tracked[returns].get("select_permissions", [])}
            for perm in function.get("permissions", []):
                if perm["role"] not in readers:
                    yield {"type": "function_permission",
                           "name": "function_permission %s in function %s in source %s"
                                   % (perm["role"], qualified, source["name"]),
                           "definition": dict(perm, function=function["function"], source=source["name"]),
                           "reason": "Inconsistent object: function permission can only be added when the "
                                     "function's return table \"%s.%s\" has select permission configured for role: "
                                     "\"%s\"" % (returns + (perm["role"],))}

    # the API
    def _call(self, headers, body):
        secret = headers.get("X-Hasura-Admin-Secret")
        if secret is None and self.jwt and self.unauthorized_role and not headers.get("Authorization"):
            return 400, {"path": "$.args", "error": "restricted access : admin only", "code": "access-denied"}
        if secret is None:
            return 401, {"path": "$", "error": "x-hasura-admin-secret/x-hasura-access-key required, but not found",
                         "code": "access-denied"}
        if secret != self.admin_secret:
            return 401, {"path": "$", "error": "invalid x-hasura-admin-secret/x-hasura-access-key",
                         "code": "access-denied"}
        if not isinstance(body, dict) or "type" not in body:
            return 400, {"path": "$", "error": "key \"type\" not found", "code": "parse-failed"}
        kind = body["type"]
        with self.lock:
            if kind == "export_metadata":
                if body.get("version") != 2:
                    return 200, _export_form(self.metadata)
                return 200, {"resource_version": self.resource_version, "metadata": _export_form(self.metadata)}
            if kind == "get_inconsistent_metadata":
                found = self.inconsistent_objects()
                return 200, {"is_consistent": not found, "inconsistent_objects": found}
            if kind == "replace_metadata":
                return self._replace(body)
            if kind in TABLE_COMMANDS:
                if self.before_write:
                    self.before_write.pop(0)(self)
                status, answer = table_command(self.metadata, self.db_tables, body)
                if status == 200:
                    self.resource_version += 1
                return status, answer
        return 400, {"path": "$.type", "error": 'unknown metadata command "%s"' % kind, "code": "parse-failed"}

    def _replace(self, body):
        args = body.get("args")
        if body.get("version") != 2 or not isinstance(args, dict) or "metadata" not in args:
            return 400, {"path": "$.args", "error": "this fake only takes replace_metadata version 2",
                         "code": "parse-failed"}
        unknown = set(args) - {"metadata", "allow_inconsistent_metadata", "allow_warnings"}
        metadata = args["metadata"]
        if unknown or not isinstance(metadata, dict) or metadata.get("version") != 3:
            return 400, {"path": "$.args", "error": "unexpected keys %s or metadata version" % sorted(unknown),
                         "code": "parse-failed"}
        for index, source in enumerate(metadata.get("sources", [])):
            error = _connection_info_error(source.get("configuration", {}).get("connection_info"))
            if error:
                return 400, {"path": "$.args.metadata.sources[%d].configuration.connection_info" % index,
                             "error": error, "code": "parse-failed"}
            for function in source.get("functions", []):
                config = function.get("configuration", {})
                if (not isinstance(function.get("function"), (dict, str))
                        or set(function) - {"function", "configuration", "permissions", "comment"}
                        or set(config) - {"custom_name", "custom_root_fields", "exposed_as", "session_argument"}
                        or config.get("exposed_as", "query") not in ("query", "mutation")
                        or any(set(p) != {"role"} for p in function.get("permissions", []))):
                    return 400, {"path": "$.args.metadata.sources[%d].functions" % index,
                                 "error": "invalid function object %s" % json.dumps(function), "code": "parse-failed"}
            for table in source.get("tables", []):
                for kind, required in (("select", ("columns", "filter")), ("insert", ("check",)),
                                       ("update", ("columns", "filter")), ("delete", ("filter",))):
                    for perm in table.get(kind + "_permissions", []):
                        for key in required:
                            if key not in perm["permission"]:
                                return 400, {"path": "$.args.metadata", "error": 'key "%s" not found' % key,
                                             "code": "parse-failed"}
        if self.before_write:
            self.before_write.pop(0)(self)
        found = self.inconsistent_objects(metadata)
        if found and not args.get("allow_inconsistent_metadata"):
            answer = {"path": "$.args", "error": "cannot continue due to inconsistent metadata", "code": "unexpected"}
            if self.admin_internal_errors or self.dev_mode:
                answer["internal"] = found
            return 400, answer
        if "resource_version" in body and body["resource_version"] != self.resource_version:
            return 409, {"path": "$", "error": "metadata resource version referenced (%s) did not match current "
                                               "version" % body["resource_version"], "code": "conflict"}
        self.metadata = copy.deepcopy(metadata)
        self.resource_version += 1
        if self.after_replace:
            self.after_replace.pop(0)(self)
        return 200, {"is_consistent": not found, "inconsistent_objects": found}

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path != "/v1/metadata":
                    status, answer = 404, {"path": "$", "error": "resource does not exist", "code": "not-found"}
                    body = None
                else:
                    try:
                        body = json.loads(raw)
                    except ValueError:
                        body = None
                    status, answer = fake._call(self.headers, body)
                with fake.lock:
                    fake.requests.append({
                        "type": (body or {}).get("type") if isinstance(body, dict) else None, "status": status,
                        "body": body, "admin_secret": self.headers.get("X-Hasura-Admin-Secret")})
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler
