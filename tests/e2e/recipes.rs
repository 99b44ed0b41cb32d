//! Every recipe of docs/recipes.md, as a test: the rules are read from that file and run, as the
//! application's role, against each product's DDL (or a faithful subset) with rows on both sides
//! of the condition; each must delete exactly the rows its product's own cleanup deletes.

use crate::common::{count, Cluster};

/// The `INSERT INTO token_cleanup.rules … ;` statements of docs/recipes.md.
fn recipes() -> Vec<String> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/recipes.md"))
        .expect("docs/recipes.md");
    let mut statements = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if line.starts_with("INSERT INTO token_cleanup.rules") {
            current = Some(String::new());
        }
        if let Some(statement) = current.as_mut() {
            statement.push_str(line);
            statement.push('\n');
            if line.trim_end().ends_with(';') {
                statements.push(current.take().unwrap());
            }
        }
    }
    statements
}

/// The products' tables, with rows on both sides of each condition. Times are built the way each
/// product stores them: UTC `timestamp` or `timestamptz`.
const FIXTURES: &str = r#"
CREATE SCHEMA dbo;
CREATE TABLE dbo."ClientAccessTokens" ("Id" uuid PRIMARY KEY, "Expiration" timestamp NOT NULL,
    "Scope" varchar(2048), "ApiClient_ApiClientId" int NOT NULL);
INSERT INTO dbo."ClientAccessTokens"
SELECT gen_random_uuid(), (now() AT TIME ZONE 'UTC') + (CASE WHEN g <= 5 THEN -1 ELSE 1 END) * interval '1 hour', 'x', 1
  FROM generate_series(1, 8) g;

CREATE TABLE idn_oauth2_access_token (token_id varchar(255) PRIMARY KEY, access_token varchar(2048),
    refresh_token varchar(2048), consumer_key_id int, authz_user varchar(100), tenant_id int,
    user_domain varchar(50), user_type varchar(25), grant_type varchar(50), time_created timestamp,
    refresh_token_time_created timestamp, validity_period bigint, refresh_token_validity_period bigint,
    token_scope_hash varchar(32), token_state varchar(25) DEFAULT 'ACTIVE',
    token_state_id varchar(128) DEFAULT 'NONE', subject_identifier varchar(255),
    access_token_hash varchar(512), refresh_token_hash varchar(512), idp_id int DEFAULT -1,
    token_binding_ref varchar(32) DEFAULT 'NONE');
INSERT INTO idn_oauth2_access_token (token_id, token_state, time_created, refresh_token_time_created,
                                     validity_period, refresh_token_validity_period)
VALUES ('e1', 'EXPIRED', now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC', 3600000, 86400000),
       ('e2', 'EXPIRED', now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC', 3600000, 86400000),
       ('i1', 'INACTIVE', now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC', 3600000, 86400000),
       ('r1', 'REVOKED', now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC', 3600000, 86400000),
       ('both1', 'ACTIVE', (now() AT TIME ZONE 'UTC') - interval '2 hours', (now() AT TIME ZONE 'UTC') - interval '2 hours', 3600000, 3600000),
       ('both2', 'ACTIVE', (now() AT TIME ZONE 'UTC') - interval '3 hours', (now() AT TIME ZONE 'UTC') - interval '3 hours', 3600000, 7200000),
       ('refreshable1', 'ACTIVE', (now() AT TIME ZONE 'UTC') - interval '2 hours', (now() AT TIME ZONE 'UTC') - interval '2 hours', 3600000, 86400000),
       ('refreshable2', 'ACTIVE', (now() AT TIME ZONE 'UTC') - interval '5 hours', (now() AT TIME ZONE 'UTC') - interval '5 hours', 3600000, 86400000),
       ('refreshable3', 'ACTIVE', (now() AT TIME ZONE 'UTC') - interval '2 days', (now() AT TIME ZONE 'UTC') - interval '1 hour', 3600000, 86400000),
       ('valid', 'ACTIVE', now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC', 3600000, 86400000),
       ('forever', 'ACTIVE', (now() AT TIME ZONE 'UTC') - interval '1 year', (now() AT TIME ZONE 'UTC') - interval '1 year', -1, -1);

CREATE TABLE idn_oauth2_authorization_code (code_id varchar(255) PRIMARY KEY,
    authorization_code varchar(2048), consumer_key_id int, callback_url varchar(2048),
    scope varchar(2048), authz_user varchar(100), tenant_id int, user_domain varchar(50),
    time_created timestamp, validity_period bigint, state varchar(25) DEFAULT 'ACTIVE',
    token_id varchar(255), subject_identifier varchar(255), pkce_code_challenge varchar(255),
    pkce_code_challenge_method varchar(128), authorization_code_hash varchar(512), idp_id int);
INSERT INTO idn_oauth2_authorization_code (code_id, state, time_created, validity_period)
VALUES ('i1', 'INACTIVE', now() AT TIME ZONE 'UTC', 300000), ('i2', 'INACTIVE', now() AT TIME ZONE 'UTC', 300000),
       ('x1', 'EXPIRED', now() AT TIME ZONE 'UTC', 300000),
       ('old1', 'ACTIVE', (now() AT TIME ZONE 'UTC') - interval '10 minutes', 300000),
       ('old2', 'ACTIVE', (now() AT TIME ZONE 'UTC') - interval '1 day', 300000),
       ('new1', 'ACTIVE', now() AT TIME ZONE 'UTC', 300000), ('new2', 'ACTIVE', now() AT TIME ZONE 'UTC', 300000),
       ('new3', 'ACTIVE', (now() AT TIME ZONE 'UTC') - interval '1 minute', 300000);

CREATE TABLE "PersistedGrants" ("Id" bigserial PRIMARY KEY, "Key" varchar(200), "Type" varchar(50) NOT NULL,
    "SubjectId" varchar(200), "SessionId" varchar(100), "ClientId" varchar(200) NOT NULL,
    "Description" varchar(200), "CreationTime" timestamp NOT NULL, "Expiration" timestamp,
    "ConsumedTime" timestamp, "Data" text NOT NULL);
INSERT INTO "PersistedGrants" ("Type", "ClientId", "CreationTime", "Expiration", "ConsumedTime", "Data")
SELECT 'refresh_token', 'c', now() AT TIME ZONE 'UTC',
       CASE WHEN g <= 3 THEN (now() AT TIME ZONE 'UTC') - interval '1 hour'
            WHEN g = 10 THEN NULL ELSE (now() AT TIME ZONE 'UTC') + interval '1 hour' END,
       CASE WHEN g IN (4, 5) THEN (now() AT TIME ZONE 'UTC') - interval '1 minute' END, '{}'
  FROM generate_series(1, 10) g;

CREATE TABLE "DeviceCodes" ("UserCode" varchar(200) PRIMARY KEY, "DeviceCode" varchar(200) NOT NULL,
    "SubjectId" varchar(200), "SessionId" varchar(100), "ClientId" varchar(200) NOT NULL,
    "Description" varchar(200), "CreationTime" timestamp NOT NULL, "Expiration" timestamp NOT NULL,
    "Data" text NOT NULL);
INSERT INTO "DeviceCodes" SELECT 'u' || g, 'd' || g, NULL, NULL, 'c', NULL, now() AT TIME ZONE 'UTC',
       (now() AT TIME ZONE 'UTC') + (CASE WHEN g <= 2 THEN -1 ELSE 1 END) * interval '5 minutes', '{}'
  FROM generate_series(1, 4) g;

CREATE TABLE oauth_access_tokens (id bigserial PRIMARY KEY, resource_owner_id bigint, application_id bigint,
    token varchar NOT NULL, refresh_token varchar, expires_in int, revoked_at timestamp,
    created_at timestamp NOT NULL, scopes varchar, previous_refresh_token varchar NOT NULL DEFAULT '');
INSERT INTO oauth_access_tokens (token, refresh_token, expires_in, revoked_at, created_at) VALUES
  ('revoked1', NULL, 7200, (now() AT TIME ZONE 'UTC') - interval '1 hour', (now() AT TIME ZONE 'UTC') - interval '90 minutes'),
  ('revoked2', 'r', 7200, (now() AT TIME ZONE 'UTC') - interval '1 hour', (now() AT TIME ZONE 'UTC') - interval '90 minutes'),
  ('revoke_later', 'r', 7200, (now() AT TIME ZONE 'UTC') + interval '1 hour', (now() AT TIME ZONE 'UTC') - interval '90 minutes'),
  ('expired1', NULL, 7200, NULL, (now() AT TIME ZONE 'UTC') - interval '3 hours'),
  ('expired2', NULL, 7200, NULL, (now() AT TIME ZONE 'UTC') - interval '1 day'),
  ('expired3', NULL, 7200, NULL, (now() AT TIME ZONE 'UTC') - interval '150 minutes'),
  ('refreshable1', 'r1', 7200, NULL, (now() AT TIME ZONE 'UTC') - interval '3 hours'),
  ('refreshable2', 'r2', 7200, NULL, (now() AT TIME ZONE 'UTC') - interval '3 days'),
  ('fresh', NULL, 7200, NULL, (now() AT TIME ZONE 'UTC') - interval '1 hour');

CREATE TABLE oauth_access_grants (id bigserial PRIMARY KEY, resource_owner_id bigint, application_id bigint,
    token varchar NOT NULL, expires_in int NOT NULL, redirect_uri text NOT NULL, created_at timestamp NOT NULL,
    revoked_at timestamp, scopes varchar);
INSERT INTO oauth_access_grants (token, expires_in, redirect_uri, created_at, revoked_at)
SELECT 'g' || g, 600, 'https://x',
       (now() AT TIME ZONE 'UTC') - CASE WHEN g <= 3 THEN interval '20 minutes' ELSE interval '5 minutes' END,
       CASE WHEN g = 6 THEN (now() AT TIME ZONE 'UTC') - interval '1 minute' END
  FROM generate_series(1, 6) g;

CREATE TABLE oauth2_provider_accesstoken (id bigserial PRIMARY KEY, token varchar(255) NOT NULL,
    expires timestamptz NOT NULL, scope text, application_id bigint, user_id bigint,
    created timestamptz NOT NULL DEFAULT now(), updated timestamptz NOT NULL DEFAULT now(),
    source_refresh_token_id bigint, id_token_id bigint);
CREATE TABLE oauth2_provider_refreshtoken (id bigserial PRIMARY KEY, token varchar(255) NOT NULL,
    access_token_id bigint UNIQUE REFERENCES oauth2_provider_accesstoken (id), application_id bigint,
    user_id bigint, created timestamptz NOT NULL DEFAULT now(), updated timestamptz NOT NULL DEFAULT now(),
    revoked timestamptz);
INSERT INTO oauth2_provider_accesstoken (token, expires)
SELECT 't' || g, now() + (CASE WHEN g <= 6 THEN -1 ELSE 1 END) * interval '1 hour' FROM generate_series(1, 10) g;
INSERT INTO oauth2_provider_refreshtoken (token, access_token_id) VALUES ('r1', 1), ('r2', 2);
CREATE TABLE oauth2_provider_grant (id bigserial PRIMARY KEY, user_id bigint, code varchar(255) NOT NULL,
    application_id bigint, expires timestamptz NOT NULL, redirect_uri text, scope text,
    created timestamptz NOT NULL DEFAULT now(), updated timestamptz NOT NULL DEFAULT now(),
    code_challenge varchar(128), code_challenge_method varchar(10), nonce varchar(255), claims text);
INSERT INTO oauth2_provider_grant (code, expires)
SELECT 'c' || g, now() + (CASE WHEN g <= 3 THEN -1 ELSE 1 END) * interval '10 minutes' FROM generate_series(1, 5) g;

CREATE TABLE oauth2_authorization (id varchar(100) PRIMARY KEY, registered_client_id varchar(100) NOT NULL,
    principal_name varchar(200) NOT NULL, authorization_grant_type varchar(100) NOT NULL,
    authorized_scopes varchar(1000), attributes text, state varchar(500),
    authorization_code_value text, authorization_code_issued_at timestamp, authorization_code_expires_at timestamp,
    authorization_code_metadata text, access_token_value text, access_token_issued_at timestamp,
    access_token_expires_at timestamp, access_token_metadata text, access_token_type varchar(100),
    access_token_scopes varchar(1000), oidc_id_token_value text, oidc_id_token_issued_at timestamp,
    oidc_id_token_expires_at timestamp, oidc_id_token_metadata text, refresh_token_value text,
    refresh_token_issued_at timestamp, refresh_token_expires_at timestamp, refresh_token_metadata text,
    user_code_value text, user_code_issued_at timestamp, user_code_expires_at timestamp, user_code_metadata text,
    device_code_value text, device_code_issued_at timestamp, device_code_expires_at timestamp,
    device_code_metadata text);
INSERT INTO oauth2_authorization (id, registered_client_id, principal_name, authorization_grant_type,
    authorization_code_expires_at, access_token_expires_at, refresh_token_expires_at)
VALUES ('code_expired', 'c', 'p', 'authorization_code', (now() AT TIME ZONE 'UTC') - interval '1 minute', NULL, NULL),
       ('refreshable', 'c', 'p', 'authorization_code', (now() AT TIME ZONE 'UTC') - interval '1 hour',
        (now() AT TIME ZONE 'UTC') - interval '30 minutes', (now() AT TIME ZONE 'UTC') + interval '1 day'),
       ('all_expired', 'c', 'p', 'authorization_code', (now() AT TIME ZONE 'UTC') - interval '2 days',
        (now() AT TIME ZONE 'UTC') - interval '2 days', (now() AT TIME ZONE 'UTC') - interval '1 day'),
       ('no_tokens', 'c', 'p', 'authorization_code', NULL, NULL, NULL),
       ('valid', 'c', 'p', 'client_credentials', NULL, (now() AT TIME ZONE 'UTC') + interval '5 minutes', NULL);

CREATE TABLE personal_access_tokens (id bigserial PRIMARY KEY, tokenable_type varchar(255) NOT NULL,
    tokenable_id bigint NOT NULL, name varchar(255) NOT NULL, token varchar(64) NOT NULL UNIQUE,
    abilities text, last_used_at timestamp(0), expires_at timestamp(0), created_at timestamp(0),
    updated_at timestamp(0));
INSERT INTO personal_access_tokens (tokenable_type, tokenable_id, name, token, expires_at)
SELECT 'App\Models\User', 1, 'api', md5(g::text),
       CASE WHEN g <= 3 THEN (now() AT TIME ZONE 'UTC') - interval '2 days'
            WHEN g <= 5 THEN (now() AT TIME ZONE 'UTC') - interval '1 hour'
            WHEN g <= 7 THEN NULL ELSE (now() AT TIME ZONE 'UTC') + interval '1 day' END
  FROM generate_series(1, 8) g;

CREATE TABLE refresh_tokens (id serial PRIMARY KEY, user_id int NOT NULL, token_hash text NOT NULL,
    expires_at timestamptz NOT NULL, revoked_at timestamptz, created_at timestamptz NOT NULL DEFAULT now());
INSERT INTO refresh_tokens (user_id, token_hash, expires_at, revoked_at)
SELECT 1, md5(g::text), now() + (CASE WHEN g BETWEEN 3 AND 5 THEN -1 ELSE 1 END) * interval '1 day',
       CASE WHEN g <= 2 THEN now() - interval '1 minute' END
  FROM generate_series(1, 9) g;
CREATE TABLE password_resets (email varchar(255) NOT NULL, token varchar(255) NOT NULL,
    created_at timestamptz);
INSERT INTO password_resets SELECT 'u' || g || '@x', md5(g::text),
       now() - CASE WHEN g <= 3 THEN interval '2 hours' ELSE interval '10 minutes' END
  FROM generate_series(1, 5) g;
"#;

#[test]
fn every_recipe_deletes_exactly_what_its_product_would() {
    let cluster = Cluster::start("recipes", &["pg_token_cleanup.enabled = off"]);
    let mut admin = cluster.database_with_extension("app");
    admin
        .batch_execute(
            "CREATE ROLE app LOGIN; GRANT CREATE ON DATABASE app TO app; GRANT CREATE ON SCHEMA public TO app;",
        )
        .unwrap();
    let mut app = cluster.connect_as("app", "app");
    app.batch_execute(FIXTURES).unwrap();
    let statements = recipes();
    assert_eq!(statements.len(), 13, "recipes in docs/recipes.md");
    for statement in &statements {
        app.batch_execute(statement)
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    let expected: &[(&str, i64, &str, i64)] = &[
        (
            "edfi_client_access_tokens",
            5,
            "dbo.\"ClientAccessTokens\"",
            3,
        ),
        ("wso2_access_tokens", 6, "idn_oauth2_access_token", 5),
        (
            "wso2_authorization_codes",
            5,
            "idn_oauth2_authorization_code",
            3,
        ),
        ("duende_persisted_grants", 5, "\"PersistedGrants\"", 5),
        ("duende_device_codes", 2, "\"DeviceCodes\"", 2),
        ("doorkeeper_access_tokens", 5, "oauth_access_tokens", 4),
        ("doorkeeper_access_grants", 4, "oauth_access_grants", 2),
        ("dot_access_tokens", 4, "oauth2_provider_accesstoken", 6),
        ("dot_grants", 3, "oauth2_provider_grant", 2),
        ("spring_authorizations", 2, "oauth2_authorization", 3),
        ("sanctum_tokens", 3, "personal_access_tokens", 5),
        ("nest_refresh_tokens", 5, "refresh_tokens", 4),
        ("nest_password_resets", 3, "password_resets", 2),
    ];
    let mut wrong = Vec::new();
    for (rule, deleted, table, left) in expected {
        let got: i64 = app
            .query_one("SELECT rows_deleted FROM token_cleanup.run($1)", &[rule])
            .unwrap_or_else(|e| panic!("running {rule}: {e}"))
            .get(0);
        let remaining = count(&mut app, &format!("SELECT count(*) FROM {table}"));
        if got != *deleted || remaining != *left {
            wrong.push(format!(
                "{rule}: deleted {got} (expected {deleted}), {remaining} left (expected {left})"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // What is left is what must stay: WSO2's refreshable ACTIVE tokens and never-expiring one.
    assert_eq!(
        count(&mut app, "SELECT count(*) FROM idn_oauth2_access_token WHERE token_id IN ('refreshable1', 'refreshable2', 'refreshable3', 'valid', 'forever')"),
        5
    );
}
