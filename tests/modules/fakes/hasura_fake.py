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
  permission columns that the database table does not have.

Tests configure the database (db_tables), interleave concurrent writers (before_replace) or database changes after
a write (after_replace), and read the request log (requests)."""

from __future__ import annotations

import copy
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _auth_table(name, custom, columns, object_rels=(), array_rels=(), select=None, delete=None, is_enum=False):
    entry = {
        "table": {"name": name, "schema": "auth"},
        "configuration": {
            "column_config": dict((c, {"custom_name": n}) for c, n in columns.items()),
            "custom_column_names": dict(columns),
            "custom_name": custom,
            "custom_root_fields": {
                "delete": "delete" + custom[0].upper() + custom[1:],
                "insert": "insert" + custom[0].upper() + custom[1:],
                "select": custom,
                "select_aggregate": custom + "Aggregate",
                "update": "update" + custom[0].upper() + custom[1:],
            },
        },
    }
    if is_enum:
        entry["is_enum"] = True
    if object_rels:
        entry["object_relationships"] = [{"name": n, "using": {"foreign_key_constraint_on": c}} for n, c in object_rels]
    if array_rels:
        entry["array_relationships"] = [
            {"name": n, "using": {"foreign_key_constraint_on": {"column": c, "table": {"name": t, "schema": "auth"}}}}
            for n, t, c in array_rels]
    if select:
        entry["select_permissions"] = [{"role": "user", "permission": select}]
    if delete:
        entry["delete_permissions"] = [{"role": "user", "permission": delete}]
    return entry


def auth_tables():
    """What nhost/auth tracks in schema auth, with its customised names, relationships and permissions."""
    return [
        _auth_table("provider_requests", "authProviderRequests", {"id": "id", "options": "options"}),
        _auth_table("providers", "authProviders", {"id": "id"},
                    array_rels=[("userProviders", "user_providers", "provider_id")]),
        _auth_table("refresh_token_types", "authRefreshTokenTypes", {}, is_enum=True,
                    array_rels=[("refreshTokens", "refresh_tokens", "type")]),
        _auth_table("refresh_tokens", "authRefreshTokens",
                    {"created_at": "createdAt", "expires_at": "expiresAt", "refresh_token_hash": "refreshTokenHash",
                     "user_id": "userId"},
                    object_rels=[("user", "user_id")],
                    select={"columns": ["id", "created_at", "expires_at", "metadata", "type", "user_id"],
                            "filter": {"user_id": {"_eq": "X-Hasura-User-Id"}}},
                    delete={"filter": {"_and": [{"user_id": {"_eq": "X-Hasura-User-Id"}}, {"type": {"_eq": "pat"}}]}}),
        _auth_table("roles", "authRoles", {"role": "role"},
                    array_rels=[("userRoles", "user_roles", "role"), ("usersByDefaultRole", "users", "default_role")]),
        _auth_table("user_providers", "authUserProviders",
                    {"access_token": "accessToken", "created_at": "createdAt", "provider_id": "providerId",
                     "user_id": "userId"},
                    object_rels=[("provider", "provider_id"), ("user", "user_id")]),
        _auth_table("user_roles", "authUserRoles", {"created_at": "createdAt", "user_id": "userId"},
                    object_rels=[("roleByRole", "role"), ("user", "user_id")]),
        _auth_table("user_security_keys", "authUserSecurityKeys",
                    {"credential_id": "credentialId", "credential_public_key": "credentialPublicKey", "id": "id",
                     "user_id": "userId"},
                    object_rels=[("user", "user_id")]),
        _auth_table("users", "users",
                    {"avatar_url": "avatarUrl", "created_at": "createdAt", "default_role": "defaultRole",
                     "display_name": "displayName", "email_verified": "emailVerified", "last_seen": "lastSeen"},
                    object_rels=[("defaultRoleByRole", "default_role")],
                    array_rels=[("refreshTokens", "refresh_tokens", "user_id"), ("roles", "user_roles", "user_id"),
                                ("securityKeys", "user_security_keys", "user_id"),
                                ("userProviders", "user_providers", "user_id")]),
        # the OAuth2 provider tables of migration 00020 (auth 0.46 and later)
        _auth_table("oauth2_client_types", "authOauth2ClientTypes", {}, is_enum=True,
                    array_rels=[("oauth2Clients", "oauth2_clients", "type")]),
        _auth_table("oauth2_clients", "authOauth2Clients",
                    {"client_id": "clientId", "client_name": "clientName", "created_at": "createdAt",
                     "created_by": "createdBy", "redirect_uris": "redirectUris", "updated_at": "updatedAt"},
                    array_rels=[("authRequests", "oauth2_auth_requests", "client_id"),
                                ("refreshTokens", "oauth2_refresh_tokens", "client_id")]),
        _auth_table("oauth2_auth_requests", "authOauth2AuthRequests",
                    {"client_id": "clientId", "created_at": "createdAt", "expires_at": "expiresAt",
                     "redirect_uri": "redirectUri", "user_id": "userId"},
                    object_rels=[("client", "client_id"), ("user", "user_id")]),
        _auth_table("oauth2_authorization_codes", "authOauth2AuthorizationCodes",
                    {"auth_request_id": "authRequestId", "code_hash": "codeHash", "created_at": "createdAt",
                     "expires_at": "expiresAt"},
                    object_rels=[("authRequest", "auth_request_id")]),
        _auth_table("oauth2_refresh_tokens", "authOauth2RefreshTokens",
                    {"client_id": "clientId", "created_at": "createdAt", "expires_at": "expiresAt",
                     "token_hash": "tokenHash", "user_id": "userId"},
                    object_rels=[("client", "client_id"), ("user", "user_id")]),
    ]


def initial_metadata():
    return {
        "version": 3,
        "sources": [
            {
                "name": "default",
                "kind": "postgres",
                "tables": auth_tables(),
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
        "inherited_roles": [{"role_name": "member", "role_set": ["user"]}],
    }


ISOLATION_LEVELS = ("read-committed", "repeatable-read", "serializable")


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


def _ref(value):
    if isinstance(value, str):
        return ("public", value)
    return (value.get("schema", "public"), value["name"])


class FakeHasura:
    def __init__(self, admin_secret="fake-admin-secret", db_tables=None, metadata=None, admin_internal_errors=True,
                 dev_mode=False, jwt=False, unauthorized_role=None):
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
        self.requests = []
        self.before_replace = []  # callables(fake), one popped per replace_metadata: a concurrent writer
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
        return found

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
            for table in source.get("tables", []):
                for kind, required in (("select", ("columns", "filter")), ("insert", ("check",)),
                                       ("update", ("columns", "filter")), ("delete", ("filter",))):
                    for perm in table.get(kind + "_permissions", []):
                        for key in required:
                            if key not in perm["permission"]:
                                return 400, {"path": "$.args.metadata", "error": 'key "%s" not found' % key,
                                             "code": "parse-failed"}
        if self.before_replace:
            self.before_replace.pop(0)(self)
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
