#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The platform over real HTTP: a real server on 127.0.0.1:0, on SQLite always and on PostgreSQL when
//! STEWARD_TEST_DATABASE_URL is set (each test gets its own database).

use std::path::Path;
use std::sync::{Arc, Mutex};

use reqwest::StatusCode;
use serde_json::{Value, json};
use steward_c1z::{C1zWriter, SyncType};
use steward_model::builders::{self, ResourceBuilder};
use steward_model::pb::{entitlement::PurposeValue, resource_type::Trait};
use steward_model::{AppTrait, profile};
use steward_platform::{ManualClock, OpenOptions};

const SECRET: &str = "s3cr3t-never-shown-0123456789";

struct Env {
    opts: OpenOptions,
    _dir: tempfile::TempDir,
    backend: &'static str,
}

async fn envs() -> Vec<Env> {
    let mut out = Vec::new();
    let d = tempfile::tempdir().unwrap();
    out.push(Env {
        opts: OpenOptions {
            db_url: None,
            data_dir: Some(d.path().to_owned()),
        },
        _dir: d,
        backend: "sqlite",
    });
    if let Ok(base) = std::env::var("STEWARD_TEST_DATABASE_URL") {
        use sqlx::Executor;
        let pool = sqlx::PgPool::connect(&base).await.unwrap();
        let name = format!("t_{}", uuid_like());
        pool.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .unwrap();
        let (prefix, _) = base.rsplit_once('/').unwrap();
        let d = tempfile::tempdir().unwrap();
        out.push(Env {
            opts: OpenOptions {
                db_url: Some(format!("{prefix}/{name}")),
                data_dir: Some(d.path().to_owned()),
            },
            _dir: d,
            backend: "postgres",
        });
    }
    out
}

fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let n = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("{n:x}{}", std::process::id())
}

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(time::macros::datetime!(2026-11-01 12:00 UTC)))
}

/// An HTTP client that remembers every response body (to check that secrets never appear).
#[derive(Clone)]
struct Api {
    base: String,
    http: reqwest::Client,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Api {
    fn new(base: String) -> Self {
        Api {
            base,
            http: reqwest::Client::new(),
            seen: Arc::default(),
        }
    }
    async fn send(&self, rb: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let r = rb.send().await.unwrap();
        let st = r.status();
        let ct = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let text = r.text().await.unwrap();
        self.seen.lock().unwrap().push(text.clone());
        if st.is_client_error() || st.is_server_error() {
            assert!(
                ct.starts_with("application/json"),
                "error {st} is not JSON: {ct} {text}"
            );
        }
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (st, v)
    }
    async fn get(&self, tok: &str, path: &str) -> (StatusCode, Value) {
        self.send(self.http.get(format!("{}{path}", self.base)).bearer_auth(tok))
            .await
    }
    async fn post(&self, tok: &str, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(
            self.http
                .post(format!("{}{path}", self.base))
                .bearer_auth(tok)
                .json(&body),
        )
        .await
    }
    async fn upload(&self, tok: &str, path: &str, bytes: Vec<u8>) -> (StatusCode, Value) {
        self.send(
            self.http
                .post(format!("{}{path}", self.base))
                .bearer_auth(tok)
                .body(bytes),
        )
        .await
    }
    fn assert_no_secret(&self) {
        for b in self.seen.lock().unwrap().iter() {
            assert!(!b.contains(SECRET), "a response contains the secret: {b}");
        }
    }
}

/// A small tenant in the Entra connector's shape: alice and bob in group Sales (assigned to Salesforce's
/// default access), carol assigned an app role directly, dave in nothing.
fn write_fixture(path: &Path, variant: bool) {
    let ut = builders::resource_type("user", "User", &[Trait::User]);
    let gt = builders::resource_type("group", "Group", &[Trait::Group]);
    let at = builders::resource_type("enterprise_application", "Enterprise application", &[Trait::App]);
    let mut w = C1zWriter::create(path).unwrap();
    w.begin_sync(SyncType::Full).unwrap();
    for t in [&ut, &gt, &at] {
        w.put_resource_type(t).unwrap();
    }
    let names = if variant {
        vec!["alice", "bob", "carol"]
    } else {
        vec!["alice", "bob", "carol", "dave"]
    };
    let users: Vec<_> = names
        .iter()
        .map(|n| {
            let upn = format!("{n}@contoso.example");
            ResourceBuilder::new("user", &format!("u-{n}"), &format!("{n} example"))
                .profile(profile::strings([
                    ("user_principal_name", upn.as_str()),
                    ("email", upn.as_str()),
                    ("department", "Sales"),
                    ("user_id", &format!("u-{n}")),
                ]))
                .user(builders::user_trait(Some(&upn), true, &upn))
                .build()
        })
        .collect();
    for u in &users {
        w.put_resource(u).unwrap();
    }
    let sales = ResourceBuilder::new("group", "g-sales", "Sales").group().build();
    let eng = ResourceBuilder::new("group", "g-eng", "Engineering")
        .group()
        .build();
    w.put_resource(&sales).unwrap();
    w.put_resource(&eng).unwrap();
    let app = ResourceBuilder::new("enterprise_application", "sp-sf", "Salesforce")
        .profile(profile::strings([("description", "CRM")]))
        .app(AppTrait::default())
        .build();
    let other = ResourceBuilder::new("enterprise_application", "sp-wd", "Workday")
        .app(AppTrait::default())
        .build();
    w.put_resource(&app).unwrap();
    w.put_resource(&other).unwrap();
    let sm = builders::entitlement(
        &sales,
        "member",
        "Sales member",
        PurposeValue::Assignment,
        std::slice::from_ref(&ut),
    );
    let em = builders::entitlement(
        &eng,
        "member",
        "Engineering member",
        PurposeValue::Assignment,
        std::slice::from_ref(&ut),
    );
    let def = builders::entitlement(
        &app,
        "assignment:00000000-0000-0000-0000-000000000000",
        "Salesforce default access",
        PurposeValue::Assignment,
        &[ut.clone(), gt.clone()],
    );
    let admin = builders::entitlement(
        &app,
        "assignment:role-admin",
        "Salesforce: Admin",
        PurposeValue::Assignment,
        &[ut.clone(), gt.clone()],
    );
    let owner = builders::entitlement(
        &app,
        "owner",
        "Salesforce owner",
        PurposeValue::Ownership,
        std::slice::from_ref(&ut),
    );
    for e in [&sm, &em, &def, &admin, &owner] {
        w.put_entitlement(e).unwrap();
    }
    w.put_grant(&builders::grant(&sm, &users[0])).unwrap();
    w.put_grant(&builders::grant(&sm, &users[1])).unwrap();
    w.put_grant(&builders::grant(&em, &users[2])).unwrap();
    w.put_grant(&builders::expandable(
        builders::grant(&def, &sales),
        &["group:g-sales:member"],
    ))
    .unwrap();
    w.put_grant(&builders::expandable(
        builders::grant(&admin, &eng),
        &["group:g-eng:member"],
    ))
    .unwrap();
    w.put_grant(&builders::grant(&admin, &users[2])).unwrap();
    w.end_sync().unwrap();
    w.finish().unwrap();
}

fn fixture(variant: bool) -> Vec<u8> {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("f.c1z");
    write_fixture(&p, variant);
    std::fs::read(p).unwrap()
}

async fn start(env: &Env) -> (steward_server::Server, Api, String) {
    let s = steward_server::start(&env.opts, "127.0.0.1:0".parse().unwrap(), clock())
        .await
        .unwrap();
    let tok = s
        .bootstrap_token
        .clone()
        .expect("first start prints a bootstrap token");
    let api = Api::new(s.url());
    (s, api, tok)
}

async fn baton_connector(api: &Api, tok: &str) -> String {
    let (st, c) = api
        .post(tok, "/api/v1/connectors", json!({"kind": "baton", "name": "fixture", "identity_source": true, "settings": {"api_token": SECRET, "region": "eu"}}))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{c}");
    c["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn playbook_with_uploaded_sync() {
    for env in envs().await {
        let (server, api, admin) = start(&env).await;
        let b = env.backend;
        // Health, OpenAPI, metrics are public.
        let (st, h) = api.get("", "/healthz").await;
        assert_eq!((st, h["database"].as_str()), (StatusCode::OK, Some(b)));
        let cid = baton_connector(&api, &admin).await;
        let (_, c) = api.get(&admin, &format!("/api/v1/connectors/{cid}")).await;
        assert_eq!(c["status"], "not_connected");
        assert_eq!(c["secrets_set"], json!(["api_token"]));
        assert_eq!(c["settings"], json!({"region": "eu"}));

        let (st, rec) = api
            .upload(&admin, &format!("/api/v1/connectors/{cid}/syncs"), fixture(false))
            .await;
        assert_eq!(st, StatusCode::CREATED, "{b}: {rec}");
        assert_eq!(rec["stats"]["identities"], 4, "{rec}");
        assert_eq!(rec["stats"]["apps_discovered"], 2);
        let (_, c) = api.get(&admin, &format!("/api/v1/connectors/{cid}/status")).await;
        assert_eq!(c["status"], "connected");

        // Unmanaged apps discovered from the enterprise applications; search and paging.
        let (_, apps) = api.get(&admin, "/api/v1/apps?managed=false").await;
        assert_eq!(apps["items"].as_array().unwrap().len(), 2);
        let (_, p1) = api.get(&admin, "/api/v1/apps?limit=1").await;
        assert_eq!(p1["items"].as_array().unwrap().len(), 1);
        let next = p1["next_page_token"].as_str().unwrap();
        let (_, p2) = api
            .get(&admin, &format!("/api/v1/apps?limit=1&page_token={next}"))
            .await;
        assert_eq!(p2["items"][0]["name"], "Workday");
        assert!(p2.get("next_page_token").is_none());
        let (_, sf) = api.get(&admin, "/api/v1/apps?q=sales").await;
        let app_id = sf["items"][0]["id"].as_str().unwrap().to_owned();
        assert_eq!(sf["items"][0]["managed"], false);
        assert_eq!(sf["items"][0]["description"], "CRM");

        // Manage it (owner: alice); its IdP assignments become its entitlements, with holders.
        let (st, m) = api
            .post(
                &admin,
                &format!("/api/v1/apps/{app_id}/manage"),
                json!({"owners": ["alice@contoso.example"]}),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{m}");
        assert_eq!(m["managed"], true);
        assert_eq!(m["owners"], json!(["u-alice"]));
        let ents = m["entitlements"].as_array().unwrap();
        let access = ents.iter().find(|e| e["kind"] == "access").unwrap();
        assert_eq!(access["holders"], 3, "group + alice + bob: {m}");
        let (st, _) = api
            .post(&admin, &format!("/api/v1/apps/{app_id}/manage"), json!({}))
            .await;
        assert_eq!(st, StatusCode::CONFLICT);
        let (_, hs) = api.get(&admin, &format!("/api/v1/apps/{app_id}/entitlements/enterprise_application:sp-sf:assignment:00000000-0000-0000-0000-000000000000/holders")).await;
        let alice = hs["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["principal_id"] == "u-alice")
            .unwrap();
        assert_eq!(
            (alice["direct"].as_bool(), alice["via"].as_str()),
            (Some(false), Some("group:g-sales:member"))
        );

        // Linked entitlements: the groups assigned to the enterprise app.
        let (_, le) = api
            .get(&admin, &format!("/api/v1/apps/{app_id}/linked-entitlements"))
            .await;
        let items = le["items"].as_array().unwrap();
        assert_eq!(items.len(), 2, "{le}");
        let sales = items
            .iter()
            .find(|l| l["idp_entitlement_id"] == "group:g-sales:member")
            .unwrap();
        assert_eq!(
            (
                sales["display_name"].as_str(),
                sales["members"].as_i64(),
                sales["action"].as_str()
            ),
            (Some("Sales"), Some(2), Some("unbound"))
        );
        let (st, l) = api
            .post(
                &admin,
                &format!("/api/v1/apps/{app_id}/linked-entitlements/group:g-sales:member"),
                json!({"action": "virtual_role", "name": "Sales rep"}),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{l}");
        assert_eq!(
            (l["action"].as_str(), l["name"].as_str()),
            (Some("virtual_role"), Some("Sales rep"))
        );
        let (st, l) = api
            .post(&admin, &format!("/api/v1/apps/{app_id}/linked-entitlements/group:g-eng:member"), json!({"action": "provision_for", "entitlement": "enterprise_application:sp-sf:assignment:role-admin"}))
            .await;
        assert_eq!(st, StatusCode::OK, "{l}");
        let (st, _) = api
            .post(
                &admin,
                &format!("/api/v1/apps/{app_id}/linked-entitlements/group:g-eng:member"),
                json!({"action": "provision_for", "entitlement": "nope"}),
            )
            .await;
        assert_eq!(st, StatusCode::NOT_FOUND);
        let (st, _) = api
            .post(
                &admin,
                &format!("/api/v1/apps/{app_id}/linked-entitlements/group:nope:member"),
                json!({"action": "skip"}),
            )
            .await;
        assert_eq!(st, StatusCode::NOT_FOUND);
        // Shown on both sides: the app has the virtual role; the IdP entitlement knows its binding.
        let (_, d) = api.get(&admin, &format!("/api/v1/apps/{app_id}")).await;
        let vr = d["entitlements"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["kind"] == "virtual_role")
            .unwrap();
        assert_eq!(
            (vr["name"].as_str(), vr["holders"].as_i64()),
            (Some("Sales rep"), Some(2))
        );
        let (_, bnd) = api
            .get(&admin, "/api/v1/idp-entitlements/group:g-sales:member/bindings")
            .await;
        assert_eq!(bnd["bindings"][0]["action"], "virtual_role");

        // Access with paths.
        let (_, acc) = api
            .get(&admin, "/api/v1/identities/alice@contoso.example/access")
            .await;
        let items = acc["items"].as_array().unwrap();
        assert_eq!(items.len(), 2, "{acc}");
        let via = items
            .iter()
            .find(|i| i["resource_type"] == "enterprise_application")
            .unwrap();
        assert_eq!(via["app_id"].as_str(), Some(app_id.as_str()));
        let kinds: Vec<&str> = via["path"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["kind"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["direct", "virtual_role", "via"], "{via}");
        assert_eq!(via["path"][0]["display_name"], "Sales member");
        assert_eq!(via["path"][1]["display_name"], "Sales rep");
        let (_, ids) = api.get(&admin, "/api/v1/identities?q=dave").await;
        assert_eq!(ids["items"][0]["department"], "Sales");

        // A sync that fails half-way (a truncated file) leaves the previous snapshot.
        let mut bad = fixture(true);
        bad.truncate(bad.len() / 2);
        let (st, e) = api
            .upload(&admin, &format!("/api/v1/connectors/{cid}/syncs"), bad)
            .await;
        assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
        assert_eq!(e["error"]["code"], "sync_file_rejected");
        let (_, c) = api.get(&admin, &format!("/api/v1/connectors/{cid}")).await;
        assert_eq!(c["status"], "error");
        assert!(c["status_reason"].as_str().unwrap().len() > 5);
        let (_, ids) = api.get(&admin, "/api/v1/identities").await;
        assert_eq!(
            ids["items"].as_array().unwrap().len(),
            4,
            "previous snapshot kept"
        );
        let (_, syncs) = api.get(&admin, &format!("/api/v1/connectors/{cid}/syncs")).await;
        assert_eq!(syncs["items"][0]["status"], "failed");
        assert_eq!(syncs["items"][1]["status"], "succeeded");
        assert!(syncs["items"][1]["log"][0].as_str().unwrap().contains("grants"));
        // The next good sync replaces the snapshot (dave is gone); bindings survive.
        let (st, _) = api
            .upload(&admin, &format!("/api/v1/connectors/{cid}/syncs"), fixture(true))
            .await;
        assert_eq!(st, StatusCode::CREATED);
        let (_, ids) = api.get(&admin, "/api/v1/identities").await;
        assert_eq!(ids["items"].as_array().unwrap().len(), 3);
        let (_, le) = api
            .get(&admin, &format!("/api/v1/apps/{app_id}/linked-entitlements"))
            .await;
        assert!(
            le["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|l| l["action"] == "virtual_role")
        );

        // Metrics count requests by route.
        let (_, m) = api.get("", "/metrics").await;
        assert!(m.as_str().unwrap().contains("route=\"/api/v1/apps/{id}/manage\""));
        api.assert_no_secret();
        server.stop().await;
        // The secret is not in the database in clear.
        if b == "sqlite" {
            for f in std::fs::read_dir(env.opts.data_dir.as_ref().unwrap()).unwrap() {
                let p = f.unwrap().path();
                if p.is_file() {
                    let bytes = std::fs::read(&p).unwrap();
                    assert!(
                        !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
                        "{p:?} holds the secret"
                    );
                }
            }
        }
        // A restart does not mint another bootstrap token.
        let s2 = steward_server::start(&env.opts, "127.0.0.1:0".parse().unwrap(), clock())
            .await
            .unwrap();
        assert!(s2.bootstrap_token.is_none());
        s2.stop().await;
    }
}

#[tokio::test]
async fn permissions_for_every_role() {
    for env in envs().await {
        let (server, api, admin) = start(&env).await;
        let cid = baton_connector(&api, &admin).await;
        api.upload(&admin, &format!("/api/v1/connectors/{cid}/syncs"), fixture(false))
            .await;
        let (_, apps) = api.get(&admin, "/api/v1/apps?q=salesforce").await;
        let app = apps["items"][0]["id"].as_str().unwrap().to_owned();
        api.post(
            &admin,
            &format!("/api/v1/apps/{app}/manage"),
            json!({"owners": ["u-alice"]}),
        )
        .await;
        let mint = |body: Value| {
            let api = api.clone();
            let admin = admin.clone();
            async move {
                let (st, t) = api.post(&admin, "/api/v1/tokens", body).await;
                assert_eq!(st, StatusCode::CREATED, "{t}");
                t["token"].as_str().unwrap().to_owned()
            }
        };
        let ca = mint(json!({"role": "connector_admin", "name": "ops"})).await;
        let owner = mint(json!({"user": "alice@contoso.example"})).await;
        let user = mint(json!({"user": "u-bob"})).await;
        let (st, _) = api
            .post(&admin, "/api/v1/tokens", json!({"user": "nobody@x"}))
            .await;
        assert_eq!(st, StatusCode::NOT_FOUND);
        let (st, _) = api
            .post(&admin, "/api/v1/tokens", json!({"role": "root", "name": "x"}))
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST);

        let ok = StatusCode::OK;
        let f = StatusCode::FORBIDDEN;
        // (method, path, body, [super_admin, connector_admin, app owner, user])
        let le = format!("/api/v1/apps/{app}/linked-entitlements");
        let cases: Vec<(&str, String, Value, [StatusCode; 4])> = vec![
            ("get", "/api/v1/me".into(), Value::Null, [ok, ok, ok, ok]),
            ("get", "/api/v1/connectors".into(), Value::Null, [ok, ok, f, f]),
            (
                "get",
                format!("/api/v1/connectors/{cid}"),
                Value::Null,
                [ok, ok, f, f],
            ),
            (
                "get",
                format!("/api/v1/connectors/{cid}/status"),
                Value::Null,
                [ok, ok, f, f],
            ),
            (
                "get",
                format!("/api/v1/connectors/{cid}/syncs"),
                Value::Null,
                [ok, ok, f, f],
            ),
            (
                "post",
                format!("/api/v1/connectors/{cid}/sync"),
                Value::Null,
                [StatusCode::BAD_REQUEST, StatusCode::BAD_REQUEST, f, f],
            ),
            (
                "post",
                "/api/v1/connectors".into(),
                json!({"kind": "baton", "name": "n-ROLE"}),
                [StatusCode::CREATED, StatusCode::CREATED, f, f],
            ),
            (
                "post",
                "/api/v1/tokens".into(),
                json!({"role": "connector_admin", "name": "x"}),
                [StatusCode::CREATED, f, f, f],
            ),
            ("get", "/api/v1/apps".into(), Value::Null, [ok, ok, ok, ok]),
            (
                "get",
                format!("/api/v1/apps/{app}"),
                Value::Null,
                [ok, ok, ok, ok],
            ),
            (
                "post",
                "/api/v1/apps".into(),
                json!({"name": "New app ROLE"}),
                [StatusCode::CREATED, f, f, f],
            ),
            ("get", le.clone(), Value::Null, [ok, f, ok, f]),
            (
                "post",
                format!("{le}/group:g-eng:member"),
                json!({"action": "skip"}),
                [ok, f, ok, f],
            ),
            (
                "get",
                format!(
                    "/api/v1/apps/{app}/entitlements/enterprise_application:sp-sf:assignment:role-admin/holders"
                ),
                Value::Null,
                [ok, ok, ok, f],
            ),
            (
                "get",
                "/api/v1/idp-entitlements/group:g-eng:member/bindings".into(),
                Value::Null,
                [ok, ok, f, f],
            ),
            ("get", "/api/v1/identities".into(), Value::Null, [ok, ok, f, f]),
            (
                "get",
                "/api/v1/identities/u-bob".into(),
                Value::Null,
                [ok, ok, f, ok],
            ),
            (
                "get",
                "/api/v1/identities/u-bob/access".into(),
                Value::Null,
                [ok, ok, f, ok],
            ),
            (
                "get",
                "/api/v1/identities/u-alice/access".into(),
                Value::Null,
                [ok, ok, ok, f],
            ),
            (
                "get",
                "/api/v1/access-profiles".into(),
                Value::Null,
                [ok, ok, ok, ok],
            ),
            (
                "post",
                "/api/v1/access-profiles".into(),
                json!({"name": "p-ROLE", "kind": "attribute", "attributes": {"department": ["Sales"]}}),
                [StatusCode::CREATED, f, f, f],
            ),
            ("get", "/api/v1/policies".into(), Value::Null, [ok, ok, ok, ok]),
            (
                "post",
                "/api/v1/policies".into(),
                json!({"name": "auto-ROLE", "steps": [{"kind": "auto_approve"}]}),
                [StatusCode::CREATED, f, f, f],
            ),
            (
                "get",
                format!("/api/v1/apps/{app}/entitlements"),
                Value::Null,
                [ok, ok, ok, ok],
            ),
            (
                "post",
                format!("/api/v1/apps/{app}/entitlement-rules"),
                json!({"resource_types": ["access"], "access_profiles": ["everyone"], "policy": "auto-super_admin"}),
                [StatusCode::CREATED, f, StatusCode::CREATED, f],
            ),
            (
                "get",
                format!("/api/v1/apps/{app}/entitlement-rules"),
                Value::Null,
                [ok, ok, ok, ok],
            ),
            // Catalog and approvals belong to identities: admin tokens without one get a 400 saying so.
            (
                "get",
                "/api/v1/catalog".into(),
                Value::Null,
                [StatusCode::BAD_REQUEST, StatusCode::BAD_REQUEST, ok, ok],
            ),
            (
                "get",
                "/api/v1/approvals".into(),
                Value::Null,
                [StatusCode::BAD_REQUEST, StatusCode::BAD_REQUEST, ok, ok],
            ),
            ("get", "/api/v1/requests".into(), Value::Null, [ok, ok, ok, ok]),
            ("get", "/api/v1/audit".into(), Value::Null, [ok, f, f, f]),
            ("get", "/api/v1/audit/verify".into(), Value::Null, [ok, f, f, f]),
            ("get", "/api/v1/webhooks".into(), Value::Null, [ok, f, f, f]),
            ("get", "/api/v1/tokens".into(), Value::Null, [ok, f, f, f]),
            (
                "post",
                "/api/v1/webhooks".into(),
                json!({"url": "http://127.0.0.1:9/ROLE"}),
                [StatusCode::CREATED, f, f, f],
            ),
        ];
        let toks = [
            ("super_admin", &admin),
            ("connector_admin", &ca),
            ("owner", &owner),
            ("user", &user),
        ];
        for (m, path, body, want) in &cases {
            for (i, (role, tok)) in toks.iter().enumerate() {
                let body = serde_json::from_str::<Value>(&body.to_string().replace("ROLE", role)).unwrap();
                let (st, v) = if *m == "get" {
                    api.get(tok, path).await
                } else {
                    api.post(tok, path, body).await
                };
                assert_eq!(st, want[i], "{} {m} {path} as {role}: {v}", env.backend);
                if st == f {
                    assert_eq!(v["error"]["code"], "forbidden");
                }
            }
            // No token and a wrong token: 401 on every non-public route.
            let (st, v) = if *m == "get" {
                api.get("wrong", path).await
            } else {
                api.post("wrong", path, body.clone()).await
            };
            assert_eq!(st, StatusCode::UNAUTHORIZED, "{m} {path}: {v}");
            let r = api.http.get(format!("{}{path}", api.base)).send().await.unwrap();
            assert!(r.status() == StatusCode::UNAUTHORIZED || r.status() == StatusCode::METHOD_NOT_ALLOWED);
        }
        let (st, _) = api
            .upload(&user, &format!("/api/v1/connectors/{cid}/syncs"), fixture(false))
            .await;
        assert_eq!(st, f);
        // A revoked token stops working at once; only a super_admin revokes; the secret is never listed.
        let spare = mint(json!({"role": "connector_admin", "name": "spare"})).await;
        let (_, list) = api.get(&admin, "/api/v1/tokens").await;
        assert!(
            !list.to_string().contains(&spare),
            "a token list never shows secrets"
        );
        let spare_id = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "spare")
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let (st, _) = api.get(&spare, "/api/v1/connectors").await;
        assert_eq!(st, ok);
        let (st, _) = api
            .post(&ca, &format!("/api/v1/tokens/{spare_id}/revoke"), Value::Null)
            .await;
        assert_eq!(st, f);
        let (st, r) = api
            .post(&admin, &format!("/api/v1/tokens/{spare_id}/revoke"), Value::Null)
            .await;
        assert_eq!((st, r["revoked"].as_bool()), (ok, Some(true)), "{r}");
        let (st, _) = api.get(&spare, "/api/v1/connectors").await;
        assert_eq!(st, StatusCode::UNAUTHORIZED);
        let (st, _) = api.post(&admin, "/api/v1/tokens/nope/revoke", Value::Null).await;
        assert_eq!(st, StatusCode::NOT_FOUND);
        let (_, log) = api.get(&admin, "/api/v1/audit?action=token.").await;
        let actions: Vec<&str> = log["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["action"].as_str().unwrap())
            .collect();
        assert!(
            actions.contains(&"token.created") && actions.contains(&"token.revoked"),
            "{actions:?}"
        );
        // Malformed JSON and unknown ids.
        let r = api
            .http
            .post(format!("{}/api/v1/connectors", api.base))
            .bearer_auth(&admin)
            .header("content-type", "application/json")
            .body("{nope")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "invalid_request");
        let (st, v) = api
            .post(&admin, "/api/v1/connectors", json!({"kind": "ldap", "name": "x"}))
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
        let (st, _) = api
            .post(
                &admin,
                "/api/v1/connectors",
                json!({"kind": "baton", "name": "x", "bogus": 1}),
            )
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
        let (st, _) = api
            .post(
                &admin,
                "/api/v1/connectors",
                json!({"kind": "entra", "name": "e"}),
            )
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "entra needs tenant and client ids");
        let (st, _) = api
            .post(
                &admin,
                "/api/v1/connectors",
                json!({"kind": "baton", "name": "fixture"}),
            )
            .await;
        assert_eq!(st, StatusCode::CONFLICT);
        let (st, _) = api
            .post(
                &admin,
                &format!("{le}/group:g-eng:member"),
                json!({"action": "explode"}),
            )
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
        for p in [
            "/api/v1/connectors/nope",
            "/api/v1/apps/nope",
            "/api/v1/identities/nope/access",
            "/api/v1/apps/nope/linked-entitlements",
            "/api/v1/apps/nope/entitlement-rules",
            "/api/v1/requests/nope",
            "/api/v1/nothing",
        ] {
            let (st, v) = api.get(&admin, p).await;
            assert_eq!(st, StatusCode::NOT_FOUND, "{p}: {v}");
            assert_eq!(v["error"]["code"], "not_found");
        }
        let (st, _) = api.get(&admin, "/api/v1/apps?limit=abc").await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
        let (st, _) = api.get(&admin, "/api/v1/apps?page_token=-4").await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
        let (st, _) = api
            .upload(&admin, "/api/v1/connectors/nope/syncs", vec![1, 2, 3])
            .await;
        assert_eq!(st, StatusCode::NOT_FOUND);
        let (st, _) = api
            .upload(
                &admin,
                &format!("/api/v1/connectors/{cid}/syncs"),
                b"not a c1z".to_vec(),
            )
            .await;
        assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
        server.stop().await;
    }
}

/// The properties a schema declares, through `$ref`, `allOf` (a `#[serde(flatten)]` field) and the
/// alternatives of `oneOf`/`anyOf`, or `None` when it is not an object schema with properties.
fn declared(doc: &Value, s: &Value) -> Option<Vec<String>> {
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        let name = r.strip_prefix("#/components/schemas/")?;
        return declared(doc, &doc["components"]["schemas"][name]);
    }
    let mut out: Vec<String> = s
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();
    let mut any = s.get("properties").is_some();
    let parts = ["allOf", "oneOf", "anyOf"]
        .into_iter()
        .filter_map(|k| s.get(k).and_then(Value::as_array));
    for part in parts.flatten() {
        if let Some(p) = declared(doc, part) {
            out.extend(p);
            any = true;
        }
    }
    any.then_some(out)
}

/// Checks `v` against the OpenAPI schema `s` (what the document uses: `$ref`, `type`, `properties`,
/// `required`, `items`, `enum`, `oneOf`/`anyOf`/`allOf`) and that an object has no field its schema does not
/// declare. The first mismatch, with where it is.
fn conforms(doc: &Value, s: &Value, v: &Value, at: &str) -> Result<(), String> {
    check(doc, s, v, at, false)
}

/// [`conforms`]; `loose`: `s` is one part of an `allOf`, whose other parts declare the other fields.
fn check(doc: &Value, s: &Value, v: &Value, at: &str, loose: bool) -> Result<(), String> {
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        let name = r
            .strip_prefix("#/components/schemas/")
            .ok_or(format!("{at}: reference {r} is not to a schema"))?;
        let t = &doc["components"]["schemas"][name];
        if t.is_null() {
            return Err(format!("{at}: {r} is not in the document"));
        }
        return check(doc, t, v, at, loose);
    }
    let parts = s.get("allOf").and_then(Value::as_array);
    for part in parts.into_iter().flatten() {
        check(doc, part, v, at, true)?;
    }
    for k in ["oneOf", "anyOf"] {
        if let Some(alts) = s.get(k).and_then(Value::as_array) {
            let errs: Vec<String> = alts
                .iter()
                .filter_map(|x| check(doc, x, v, at, loose).err())
                .collect();
            if errs.len() == alts.len() {
                return Err(format!("{at}: {v} matches none of {k}: {errs:?}"));
            }
        }
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array)
        && !e.contains(v)
    {
        return Err(format!("{at}: {v} is not one of {e:?}"));
    }
    if let Some(t) = s.get("type") {
        let types: Vec<&str> = match t {
            Value::String(x) => vec![x.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let ok = types.iter().any(|t| match *t {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            "null" => v.is_null(),
            _ => false,
        });
        if !ok {
            return Err(format!("{at}: {v} is not of type {t}"));
        }
    }
    if let Some(o) = v.as_object() {
        for r in s.get("required").and_then(Value::as_array).into_iter().flatten() {
            let k = r.as_str().unwrap();
            if !o.contains_key(k) {
                return Err(format!("{at}: required field {k} is missing in {v}"));
            }
        }
        let props = s.get("properties").and_then(Value::as_object);
        for (k, x) in o {
            if let Some(ps) = props.and_then(|p| p.get(k)) {
                check(doc, ps, x, &format!("{at}.{k}"), false)?;
            }
        }
        if !loose
            && s.get("oneOf").is_none()
            && let Some(known) = declared(doc, s)
            && let Some(k) = o.keys().find(|k| !known.contains(k))
        {
            return Err(format!("{at}: field {k} is not in the schema"));
        }
    }
    if let (Some(items), Some(a)) = (s.get("items"), v.as_array()) {
        for (i, x) in a.iter().enumerate() {
            check(doc, items, x, &format!("{at}[{i}]"), false)?;
        }
    }
    Ok(())
}

/// Every `$ref` in `v`.
fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            if let Some(Value::String(r)) = o.get("$ref") {
                out.push(r.clone());
            }
            o.values().for_each(|x| refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

#[tokio::test]
async fn openapi_lists_every_route_with_its_schemas() {
    let env = envs().await.remove(0);
    let (server, api, admin) = start(&env).await;
    let (st, doc) = api.get("", "/api/v1/openapi.json").await;
    assert_eq!(st, StatusCode::OK);
    let routes = steward_server::routes();
    assert!(routes.len() >= 20);
    let mut op_ids = std::collections::BTreeSet::new();
    for r in &routes {
        let op = &doc["paths"][r.path][r.method];
        assert!(
            op.is_object(),
            "{} {} missing from the OpenAPI document",
            r.method,
            r.path
        );
        assert!(op_ids.insert(op["operationId"].as_str().unwrap().to_owned()));
        // The successful response declares its content, with a schema.
        let ok: Vec<(&String, &Value)> = op["responses"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.starts_with('2'))
            .collect();
        assert_eq!(ok.len(), 1, "{} {}: {op}", r.method, r.path);
        let content = ok[0].1["content"].as_object().unwrap();
        assert!(
            content.values().all(|c| c["schema"].is_object()),
            "{} {}: {op}",
            r.method,
            r.path
        );
        // A route that reads a JSON body declares its schema.
        match r.request {
            steward_server::In::Json(_) | steward_server::In::Optional(_) => assert!(
                op["requestBody"]["content"]["application/json"]["schema"].is_object(),
                "{} {} takes JSON but declares no schema: {op}",
                r.method,
                r.path
            ),
            steward_server::In::File => assert!(
                op["requestBody"]["content"]["application/octet-stream"].is_object(),
                "{} {}",
                r.method,
                r.path
            ),
            steward_server::In::Empty => assert!(op.get("requestBody").is_none()),
        }
        // Path parameters and, for a handler that reads a query, its parameters.
        let params = op["parameters"].as_array().unwrap();
        let in_query = params.iter().filter(|p| p["in"] == "query").count();
        assert_eq!(in_query > 0, r.query.is_some(), "{} {}: {op}", r.method, r.path);
        assert_eq!(
            params.iter().filter(|p| p["in"] == "path").count(),
            r.path.matches('{').count()
        );
        // And the route is served (not the 404 fallback).
        let path = r
            .path
            .replace("{id}", "x")
            .replace("{entitlement}", "x")
            .replace("{idpEntitlement}", "x");
        let (st, v) = if r.method == "get" {
            api.get(&admin, &path).await
        } else {
            api.post(&admin, &path, json!({})).await
        };
        assert!(
            st != StatusCode::METHOD_NOT_ALLOWED
                && v["error"]["message"] != "route not found: no such endpoint",
            "{} {path}: {st} {v}",
            r.method
        );
    }
    let n: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p.as_object().unwrap().len())
        .sum();
    assert_eq!(n, routes.len());
    // Every reference resolves.
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(all.len() > routes.len());
    for r in &all {
        let parts: Vec<&str> = r.trim_start_matches("#/").split('/').collect();
        assert_eq!(parts.len(), 3, "{r}");
        assert!(
            doc[parts[0]][parts[1]][parts[2]].is_object(),
            "{r} is referenced but not defined"
        );
    }
    let apps_query: Vec<&str> = doc["paths"]["/api/v1/apps"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(apps_query, ["managed", "q", "limit", "page_token"]);
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for name in [
        "CreateConnector",
        "Connector",
        "AccessItem",
        "PathStep",
        "LinkAction",
        "AppDetail",
    ] {
        assert!(schemas.contains_key(name), "{name} missing: {:?}", schemas.keys());
    }

    // Real responses conform to the schemas the document gives for them.
    let cid = baton_connector(&api, &admin).await;
    let (st, _) = api
        .upload(&admin, &format!("/api/v1/connectors/{cid}/syncs"), fixture(false))
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let (_, apps) = api.get(&admin, "/api/v1/apps?q=sales").await;
    let app = apps["items"][0]["id"].as_str().unwrap().to_owned();
    let (st, _) = api
        .post(
            &admin,
            &format!("/api/v1/apps/{app}/manage"),
            json!({"owners": ["u-alice"]}),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let schema_of = |route: &str, method: &str, status: &str| {
        doc["paths"][route][method]["responses"][status]["content"]["application/json"]["schema"].clone()
    };
    let checks: Vec<(&str, &str, String)> = vec![
        ("/healthz", "get", "/healthz".into()),
        ("/api/v1/me", "get", "/api/v1/me".into()),
        ("/api/v1/connectors", "get", "/api/v1/connectors".into()),
        (
            "/api/v1/connectors/{id}",
            "get",
            format!("/api/v1/connectors/{cid}"),
        ),
        (
            "/api/v1/connectors/{id}/status",
            "get",
            format!("/api/v1/connectors/{cid}/status"),
        ),
        (
            "/api/v1/connectors/{id}/syncs",
            "get",
            format!("/api/v1/connectors/{cid}/syncs"),
        ),
        ("/api/v1/apps", "get", "/api/v1/apps".into()),
        ("/api/v1/apps/{id}", "get", format!("/api/v1/apps/{app}")),
        (
            "/api/v1/apps/{id}/linked-entitlements",
            "get",
            format!("/api/v1/apps/{app}/linked-entitlements"),
        ),
        (
            "/api/v1/idp-entitlements/{idpEntitlement}/bindings",
            "get",
            "/api/v1/idp-entitlements/group:g-sales:member/bindings".into(),
        ),
        ("/api/v1/identities", "get", "/api/v1/identities".into()),
        (
            "/api/v1/identities/{id}",
            "get",
            "/api/v1/identities/u-alice".into(),
        ),
        (
            "/api/v1/identities/{id}/access",
            "get",
            "/api/v1/identities/u-alice/access".into(),
        ),
        ("/api/v1/access-profiles", "get", "/api/v1/access-profiles".into()),
        ("/api/v1/policies", "get", "/api/v1/policies".into()),
        (
            "/api/v1/apps/{id}/entitlements",
            "get",
            format!("/api/v1/apps/{app}/entitlements"),
        ),
        ("/api/v1/tokens", "get", "/api/v1/tokens".into()),
        ("/api/v1/audit", "get", "/api/v1/audit".into()),
        ("/api/v1/audit/verify", "get", "/api/v1/audit/verify".into()),
    ];
    for (route, method, path) in &checks {
        let (st, v) = api.get(&admin, path).await;
        assert_eq!(st, StatusCode::OK, "{path}: {v}");
        let s = schema_of(route, method, "200");
        assert!(s.is_object(), "{route}");
        if let Err(e) = conforms(&doc, &s, &v, path) {
            panic!("{route}: the response does not conform to its schema: {e}\n{v}");
        }
    }
    // The access response is not empty, so its items were checked.
    let (_, acc) = api.get(&admin, "/api/v1/identities/u-alice/access").await;
    assert!(!acc["items"].as_array().unwrap().is_empty());
    let (st, created) = api
        .post(
            &admin,
            "/api/v1/apps",
            json!({"name": "Schema check", "owners": ["u-alice"]}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    conforms(
        &doc,
        &schema_of("/api/v1/apps", "post", "201"),
        &created,
        "POST /api/v1/apps",
    )
    .unwrap();
    // The checker itself rejects what does not conform.
    let conn = schema_of("/api/v1/connectors/{id}", "get", "200");
    let (_, mut c) = api.get(&admin, &format!("/api/v1/connectors/{cid}")).await;
    c["undeclared"] = json!(1);
    assert!(conforms(&doc, &conn, &c, "c").is_err());
    c.as_object_mut().unwrap().remove("undeclared");
    c.as_object_mut().unwrap().remove("name");
    assert!(conforms(&doc, &conn, &c, "c").is_err());
    server.stop().await;
}

#[tokio::test]
async fn entra_connector_against_the_emulator() {
    let sim_dir = tempfile::tempdir().unwrap();
    let sim = steward_sim::start(steward_sim::Options {
        tenant: steward_sim::generate(steward_sim::Size::named("small").unwrap(), 7),
        settings: Default::default(),
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: false,
        proxy: None,
        state_dir: sim_dir.path().to_owned(),
    })
    .await
    .unwrap();
    let r = sim.ready.clone();
    for env in envs().await {
        let (server, api, admin) = start(&env).await;
        let (st, c) = api
            .post(&admin, "/api/v1/connectors", json!({"kind": "entra", "name": "Contoso", "settings": {
                "entra_tenant_id": r.tenant_id, "entra_client_id": r.client_id, "entra_client_secret": r.client_secret,
                "login_endpoint": r.login, "graph_endpoint": r.graph}}))
            .await;
        assert_eq!(st, StatusCode::CREATED, "{c}");
        assert_eq!(c["identity_source"], true);
        let cid = c["id"].as_str().unwrap().to_owned();
        let (st, c) = api
            .post(&admin, &format!("/api/v1/connectors/{cid}/sync"), Value::Null)
            .await;
        assert_eq!(
            (st, c["status"].as_str()),
            (StatusCode::ACCEPTED, Some("syncing"))
        );
        let mut status = Value::Null;
        for _ in 0..600 {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            let (_, s) = api.get(&admin, &format!("/api/v1/connectors/{cid}/status")).await;
            if s["status"] != "syncing" {
                status = s;
                break;
            }
        }
        assert_eq!(status["status"], "connected", "{status}");
        let (_, syncs) = api.get(&admin, &format!("/api/v1/connectors/{cid}/syncs")).await;
        assert!(
            syncs["items"][0]["stats"]["grants"].as_u64().unwrap() > 0,
            "{syncs}"
        );
        // The playbook: unmanaged apps, manage one with assigned groups, bind its groups.
        let (_, apps) = api.get(&admin, "/api/v1/apps?managed=false&limit=1000").await;
        let apps = apps["items"].as_array().unwrap();
        assert!(!apps.is_empty());
        let mut chosen = None;
        for a in apps {
            let id = a["id"].as_str().unwrap();
            let (_, le) = api
                .get(&admin, &format!("/api/v1/apps/{id}/linked-entitlements"))
                .await;
            if !le["items"].as_array().unwrap().is_empty() {
                chosen = Some((id.to_owned(), le));
                break;
            }
        }
        let (app, le) = chosen.expect("some enterprise app has groups assigned");
        let (st, m) = api
            .post(&admin, &format!("/api/v1/apps/{app}/manage"), Value::Null)
            .await;
        assert_eq!(st, StatusCode::OK, "{m}");
        assert!(
            m["entitlements"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["kind"] == "access")
        );
        let idp = le["items"][0]["idp_entitlement_id"].as_str().unwrap();
        let (st, l) = api
            .post(
                &admin,
                &format!("/api/v1/apps/{app}/linked-entitlements/{idp}"),
                json!({"action": "virtual_role", "name": "Members"}),
            )
            .await;
        assert_eq!(
            (st, l["action"].as_str()),
            (StatusCode::OK, Some("virtual_role")),
            "{l}"
        );
        // A user's access, with paths, as that user.
        let (_, ids) = api.get(&admin, "/api/v1/identities?limit=1").await;
        let who = ids["items"][0]["id"].as_str().unwrap().to_owned();
        let (_, t) = api.post(&admin, "/api/v1/tokens", json!({"user": who})).await;
        let ut = t["token"].as_str().unwrap();
        let (st, acc) = api.get(ut, &format!("/api/v1/identities/{who}/access")).await;
        assert_eq!(st, StatusCode::OK);
        assert!(
            acc["items"]
                .as_array()
                .unwrap()
                .iter()
                .all(|i| !i["path"].as_array().unwrap().is_empty())
        );
        let (st, c) = api.get(&admin, &format!("/api/v1/connectors/{cid}")).await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(c["secrets_set"], json!(["entra_client_secret"]));
        for b in api.seen.lock().unwrap().iter() {
            assert!(
                !b.contains(&r.client_secret),
                "a response contains the client secret"
            );
        }
        server.stop().await;
    }
    sim.stop().await;
}

#[tokio::test]
async fn two_servers_share_one_postgres_database() {
    let Some(env) = envs().await.into_iter().find(|e| e.backend == "postgres") else {
        return;
    };
    let (a, api_a, admin) = start(&env).await;
    let b = steward_server::start(&env.opts, "127.0.0.1:0".parse().unwrap(), clock())
        .await
        .unwrap();
    assert!(b.bootstrap_token.is_none(), "one bootstrap token per database");
    let api_b = Api::new(b.url());
    let cid = baton_connector(&api_a, &admin).await;
    let (st, _) = api_b
        .upload(&admin, &format!("/api/v1/connectors/{cid}/syncs"), fixture(false))
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let (_, apps) = api_a.get(&admin, "/api/v1/apps").await;
    assert_eq!(apps["items"].as_array().unwrap().len(), 2);
    let id = apps["items"][0]["id"].as_str().unwrap();
    api_a
        .post(&admin, &format!("/api/v1/apps/{id}/manage"), json!({}))
        .await;
    let (_, v) = api_b.get(&admin, &format!("/api/v1/apps/{id}")).await;
    assert_eq!(v["managed"], true);
    a.stop().await;
    b.stop().await;
}

// ---- Just-in-time access requests (issue 8) ----

/// A platform synced from the emulator with one managed app whose first assigned group is a virtual role.
struct Jit {
    server: steward_server::Server,
    api: Api,
    admin: String,
    clock: Arc<ManualClock>,
    cid: String,
    app: String,
    access: String,
    vr: String,
    gid: uuid::Uuid,
    sp: uuid::Uuid,
}

async fn sync_and_wait(api: &Api, admin: &str, cid: &str) {
    let before = api.get(admin, &format!("/api/v1/connectors/{cid}/syncs")).await.1["items"]
        .as_array()
        .map_or(0, |a| a.len());
    let (st, c) = api
        .post(admin, &format!("/api/v1/connectors/{cid}/sync"), Value::Null)
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{c}");
    for _ in 0..1200 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let (_, s) = api.get(admin, &format!("/api/v1/connectors/{cid}/syncs")).await;
        let items = s["items"].as_array().unwrap();
        if items.len() > before && items[0]["status"] != "running" {
            assert_eq!(items[0]["status"], "succeeded", "{s}");
            return;
        }
    }
    panic!("sync did not finish");
}

async fn jit_setup(env: &Env, r: &steward_sim::Ready) -> Jit {
    let clock = Arc::new(ManualClock::new(time::OffsetDateTime::now_utc()));
    let server = steward_server::start(&env.opts, "127.0.0.1:0".parse().unwrap(), clock.clone())
        .await
        .unwrap();
    let admin = server.bootstrap_token.clone().unwrap();
    let api = Api::new(server.url());
    let (st, c) = api
        .post(&admin, "/api/v1/connectors", json!({"kind": "entra", "name": "Contoso", "settings": {
            "entra_tenant_id": r.tenant_id, "entra_client_id": r.client_id, "entra_client_secret": r.client_secret,
            "login_endpoint": r.login, "graph_endpoint": r.graph, "provisioning": true}}))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{c}");
    let cid = c["id"].as_str().unwrap().to_owned();
    sync_and_wait(&api, &admin, &cid).await;
    let (_, apps) = api.get(&admin, "/api/v1/apps?managed=false&limit=1000").await;
    let mut chosen = None;
    for a in apps["items"].as_array().unwrap() {
        let id = a["id"].as_str().unwrap();
        let (_, le) = api
            .get(&admin, &format!("/api/v1/apps/{id}/linked-entitlements"))
            .await;
        if let Some(first) = le["items"].as_array().unwrap().first() {
            chosen = Some((
                id.to_owned(),
                a["resource_id"].as_str().unwrap().to_owned(),
                first["idp_entitlement_id"].as_str().unwrap().to_owned(),
            ));
            break;
        }
    }
    let (app, sp, idp) = chosen.expect("an enterprise app with an assigned group");
    let (st, m) = api
        .post(&admin, &format!("/api/v1/apps/{app}/manage"), json!({}))
        .await;
    assert_eq!(st, StatusCode::OK, "{m}");
    let (st, l) = api
        .post(
            &admin,
            &format!("/api/v1/apps/{app}/linked-entitlements/{idp}"),
            json!({"action": "virtual_role", "name": "Members"}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{l}");
    let (_, ents) = api.get(&admin, &format!("/api/v1/apps/{app}/entitlements")).await;
    let find = |kind: &str| {
        ents["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} entitlement in {ents}"))["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (access, vr) = (find("access"), find("virtual_role"));
    let gid = idp
        .strip_prefix("group:")
        .and_then(|s| s.strip_suffix(":member"))
        .unwrap()
        .parse()
        .unwrap();
    Jit {
        server,
        api,
        admin,
        clock,
        cid,
        app,
        access,
        vr,
        gid,
        sp: sp.parse().unwrap(),
    }
}

fn in_group(sim: &steward_sim::Running, g: uuid::Uuid, u: uuid::Uuid) -> bool {
    sim.sim.read().group(&g).is_some_and(|g| g.members.contains(&u))
}

fn assigned(sim: &steward_sim::Running, sp: uuid::Uuid, u: uuid::Uuid) -> bool {
    sim.sim
        .read()
        .tenant
        .app_role_assignments
        .iter()
        .any(|a| a.resource_id == sp && a.principal_id == u)
}

/// Enabled users with a manager who hold neither the group nor an assignment of the app.
async fn fresh_users(j: &Jit, sim: &steward_sim::Running) -> Vec<(String, String)> {
    let (_, ids) = j.api.get(&j.admin, "/api/v1/identities?limit=1000").await;
    ids["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["kind"] == "user" && i["status"] == "enabled" && i["manager_id"].is_string())
        .filter_map(|i| {
            let id = i["id"].as_str()?;
            let u: uuid::Uuid = id.parse().ok()?;
            (!in_group(sim, j.gid, u) && !assigned(sim, j.sp, u))
                .then(|| (id.to_owned(), i["manager_id"].as_str().unwrap().to_owned()))
        })
        .collect()
}

async fn user_token(j: &Jit, who: &str) -> String {
    let (st, t) = j.api.post(&j.admin, "/api/v1/tokens", json!({"user": who})).await;
    assert_eq!(st, StatusCode::CREATED, "{t}");
    t["token"].as_str().unwrap().to_owned()
}

async fn wait_state(api: &Api, tok: &str, id: &str, want: &str) -> Value {
    let mut last = Value::Null;
    for _ in 0..600 {
        let (st, r) = api.get(tok, &format!("/api/v1/requests/{id}")).await;
        assert_eq!(st, StatusCode::OK, "{r}");
        if r["state"] == want {
            return r;
        }
        last = r;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("request never reached {want}: {last:#}");
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..600 {
        if f() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// The task table's rows: (kind, state, run_at_s, last_error).
async fn task_rows(env: &Env) -> Vec<(String, String, i64, Option<String>)> {
    let sql = "SELECT kind, state, run_at_s, last_error FROM tasks ORDER BY run_at_s";
    match &env.opts.db_url {
        Some(u) => {
            let p = sqlx::PgPool::connect(u).await.unwrap();
            sqlx::query_as(sql).fetch_all(&p).await.unwrap()
        }
        None => {
            let f = env.opts.data_dir.as_ref().unwrap().join("steward.db");
            let p = sqlx::SqlitePool::connect(&format!("sqlite://{}", f.display()))
                .await
                .unwrap();
            sqlx::query_as(sql).fetch_all(&p).await.unwrap()
        }
    }
}

async fn tamper_audit(env: &Env, seq: i64) {
    use sqlx::Executor;
    let sql = format!("UPDATE audit_log SET actor = 'mallory' WHERE seq = {seq}");
    match &env.opts.db_url {
        Some(u) => {
            let p = sqlx::PgPool::connect(u).await.unwrap();
            p.execute(sqlx::AssertSqlSafe(sql)).await.unwrap();
        }
        None => {
            let f = env.opts.data_dir.as_ref().unwrap().join("steward.db");
            let p = sqlx::SqlitePool::connect(&format!("sqlite://{}", f.display()))
                .await
                .unwrap();
            p.execute(sqlx::AssertSqlSafe(sql)).await.unwrap();
        }
    }
}

async fn small_sim() -> (steward_sim::Running, tempfile::TempDir) {
    let sim_dir = tempfile::tempdir().unwrap();
    let sim = steward_sim::start(steward_sim::Options {
        tenant: steward_sim::generate(steward_sim::Size::named("small").unwrap(), 7),
        settings: Default::default(),
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: false,
        proxy: None,
        state_dir: sim_dir.path().to_owned(),
    })
    .await
    .unwrap();
    (sim, sim_dir)
}

/// The playbook: auto-approved requests for app access and a virtual role are provisioned in the emulated
/// tenant, confirmed by the next sync, expire and are removed; drift is removed again; the audit log
/// verifies until a row is edited.
#[tokio::test]
async fn jit_playbook_auto_approve_provision_expire_drift_audit() {
    let (sim, _d) = small_sim().await;
    for env in envs().await {
        let j = jit_setup(&env, &sim.ready).await;
        let (api, admin) = (&j.api, j.admin.as_str());
        let (st, p) = api
            .post(
                admin,
                "/api/v1/policies",
                json!({"name": "auto", "steps": [{"kind": "auto_approve"}]}),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{p}");
        // Nothing is requestable before a rule says so.
        let (who, _) = fresh_users(&j, &sim)
            .await
            .into_iter()
            .next()
            .expect("a fresh user");
        let ut = user_token(&j, &who).await;
        let (_, cat) = api.get(&ut, "/api/v1/catalog").await;
        assert_eq!(cat["items"], json!([]), "{cat}");
        let (st, e) = api
            .post(
                &ut,
                "/api/v1/requests",
                json!({"entitlement": j.access, "justification": "x"}),
            )
            .await;
        assert_eq!(st, StatusCode::NOT_FOUND, "{e}");
        let (st, rule) = api
            .post(
                admin,
                &format!("/api/v1/apps/{}/entitlement-rules", j.app),
                json!({"enabled": true, "resource_types": ["access", "virtual_role"], "access_profiles": ["everyone"], "policy": "auto", "max_duration": 3600}),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{rule}");
        let (_, cat) = api.get(&ut, "/api/v1/catalog").await;
        let items = cat["items"].as_array().unwrap();
        assert_eq!(items.len(), 2, "{cat}");
        assert!(
            items
                .iter()
                .all(|i| i["why"][0].as_str().unwrap().contains("Everyone"))
        );
        // Longer than the rule allows: refused with the limit.
        let (st, e) = api
            .post(
                &ut,
                "/api/v1/requests",
                json!({"entitlement": j.access, "duration": 7200}),
            )
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{e}");
        assert!(e["error"]["message"].as_str().unwrap().contains("3600"), "{e}");
        let mut ids = Vec::new();
        for ent in [&j.access, &j.vr] {
            let (st, r) = api
                .post(
                    &ut,
                    "/api/v1/requests",
                    json!({"entitlement": ent, "justification": "quarter close", "duration": 120}),
                )
                .await;
            assert_eq!(st, StatusCode::CREATED, "{r}");
            assert_ne!(r["state"], "pending_approval", "auto-approved at once: {r}");
            ids.push(r["id"].as_str().unwrap().to_owned());
        }
        // A second request for the same thing while one is open is refused.
        let (st, e) = api
            .post(
                &ut,
                "/api/v1/requests",
                json!({"entitlement": j.vr, "duration": 60}),
            )
            .await;
        assert_eq!(st, StatusCode::CONFLICT, "{e}");
        let u: uuid::Uuid = who.parse().unwrap();
        for id in &ids {
            let r = wait_state(&j.api, &ut, id, "provisioned").await;
            let kinds: Vec<&str> = r["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["kind"].as_str().unwrap())
                .collect();
            assert!(
                kinds.contains(&"provision") && kinds.contains(&"confirm"),
                "{r:#}"
            );
            assert!(r["expires_at"].is_string());
        }
        assert!(
            in_group(&sim, j.gid, u),
            "the emulated tenant shows the group membership"
        );
        assert!(
            assigned(&sim, j.sp, u),
            "the emulated tenant shows the app assignment"
        );
        // The next sync confirms it.
        sync_and_wait(api, admin, &j.cid).await;
        let (_, acc) = api.get(&ut, &format!("/api/v1/identities/{who}/access")).await;
        let held: Vec<&str> = acc["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["direct"] == true)
            .map(|i| i["entitlement_id"].as_str().unwrap())
            .collect();
        assert!(
            held.contains(&format!("group:{}:member", j.gid).as_str()),
            "{acc}"
        );
        assert!(
            held.iter()
                .any(|e| e.starts_with(&format!("enterprise_application:{}:assignment:", j.sp))),
            "{acc}"
        );
        // Two minutes later both expire and are removed from the tenant.
        j.clock.advance(time::Duration::seconds(121));
        for id in &ids {
            let r = wait_state(&j.api, &ut, id, "expired").await;
            assert!(r["ended_at"].is_string());
        }
        assert!(!in_group(&sim, j.gid, u));
        assert!(!assigned(&sim, j.sp, u));
        // Someone puts the membership back behind our back: the next sync reports drift and it is removed.
        sim.sim.write().add_group_member(j.gid, u).unwrap();
        sync_and_wait(api, admin, &j.cid).await;
        let gid = j.gid;
        wait_until("drift removed from the tenant", || !in_group(&sim, gid, u)).await;
        // The worker records the removal after its confirming partial sync.
        let mut r = Value::Null;
        for _ in 0..600 {
            r = api.get(&ut, &format!("/api/v1/requests/{}", ids[1])).await.1;
            if r["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["kind"] == "drift_revoked")
            {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(r["drift_count"], 1, "{r:#}");
        assert_eq!(r["state"], "expired");
        assert!(
            r["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["kind"] == "drift_revoked"),
            "{r:#}"
        );
        // Audit: every step is there, the chain verifies, exports work, and an edit is caught.
        let (_, log) = api
            .get(admin, &format!("/api/v1/audit?target_id={}&limit=1000", ids[1]))
            .await;
        let actions: Vec<&str> = log["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["action"].as_str().unwrap())
            .collect();
        for a in [
            "request.created",
            "request.approved",
            "request.provisioned",
            "request.expired",
            "drift.detected",
        ] {
            assert!(actions.contains(&a), "{a} missing from {actions:?}");
        }
        let (st, e) = api.get(&ut, "/api/v1/audit").await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{e}");
        let (_, v) = api.get(admin, "/api/v1/audit/verify").await;
        assert_eq!(v["ok"], true, "{v}");
        let (st, csv) = api.get(admin, "/api/v1/audit?format=csv&action=request.").await;
        assert_eq!(st, StatusCode::OK);
        let csv = csv.as_str().unwrap();
        assert!(
            csv.starts_with("seq,at,actor,action") && csv.contains("request.expired"),
            "{csv}"
        );
        let (_, jl) = api.get(admin, "/api/v1/audit?format=jsonl").await;
        let lines: Vec<Value> = jl
            .as_str()
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len() as i64, v["entries"].as_i64().unwrap());
        // Finished tasks are purged a week later; the audit log and the request keep the history.
        let p = &j.server.platform;
        assert_eq!(
            p.purge_finished_tasks().await.unwrap(),
            0,
            "nothing is a week old yet"
        );
        j.clock.advance(time::Duration::days(8));
        let purged = p.purge_finished_tasks().await.unwrap();
        assert!(
            purged >= 5,
            "2 provisions, 2 expiries, 1 drift removal: {purged} purged; left: {:?}",
            task_rows(&env).await
        );
        assert_eq!(p.purge_finished_tasks().await.unwrap(), 0);
        let (_, r) = api.get(&ut, &format!("/api/v1/requests/{}", ids[1])).await;
        assert!(r["events"].as_array().unwrap().len() >= 5, "{r:#}");
        tamper_audit(&env, 3).await;
        let (_, v) = api.get(admin, "/api/v1/audit/verify").await;
        assert_eq!(v["ok"], false, "{v}");
        assert!(
            v["problem"].as_str().unwrap().contains("entry 3 was edited"),
            "{v}"
        );
        api.assert_no_secret();
        j.server.stop().await;
    }
    sim.stop().await;
}

/// A webhook receiver on 127.0.0.1:0 that fails its first call and keeps the bodies of the others.
async fn hook_receiver() -> (
    String,
    Arc<Mutex<Vec<Value>>>,
    Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let (g, count) = (got.clone(), calls.clone());
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(v): axum::Json<Value>| {
            let (g, calls) = (g.clone(), calls.clone());
            async move {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    return StatusCode::INTERNAL_SERVER_ERROR;
                }
                g.lock().unwrap().push(v);
                StatusCode::OK
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (url, got, count)
}

/// Removes the Graph permissions that let the connector write memberships and assignments; returns them.
fn strip_write_permissions(
    sim: &steward_sim::Running,
    client_id: &str,
) -> Vec<steward_sim::model::AppRoleAssignment> {
    let mut st = sim.sim.write();
    let graph_app: uuid::Uuid = steward_sim::catalog::GRAPH_APP_ID.parse().unwrap();
    let graph = st.tenant.service_principals[st.sp_by_app_id[&graph_app]].clone();
    let me = st.tenant.service_principals[st.sp_by_app_id[&client_id.parse::<uuid::Uuid>().unwrap()]].id;
    let write_roles: Vec<uuid::Uuid> = graph
        .app_roles
        .iter()
        .filter(|r| {
            matches!(
                r.value.as_deref(),
                Some(
                    "GroupMember.ReadWrite.All"
                        | "Group.ReadWrite.All"
                        | "Directory.ReadWrite.All"
                        | "AppRoleAssignment.ReadWrite.All"
                )
            )
        })
        .map(|r| r.id)
        .collect();
    let gone: Vec<_> = st
        .tenant
        .app_role_assignments
        .iter()
        .filter(|a| a.resource_id == graph.id && a.principal_id == me && write_roles.contains(&a.app_role_id))
        .cloned()
        .collect();
    assert!(
        !gone.is_empty(),
        "the emulated app has write permissions to remove"
    );
    for a in &gone {
        st.remove_app_role_assignment(graph.id, &a.id).unwrap();
    }
    gone
}

fn restore_permissions(sim: &steward_sim::Running, gone: Vec<steward_sim::model::AppRoleAssignment>) {
    let mut st = sim.sim.write();
    for a in gone {
        st.add_app_role_assignment(a.resource_id, a.principal_id, a.app_role_id, a.id, a.created)
            .unwrap();
    }
}

/// Manager then app-owner approval, self-approval refused, denial, and a provisioning failure (the tenant
/// refuses the write for lack of permission) that ends `failed` with the reason and succeeds on retry.
#[tokio::test]
async fn jit_approvals_denial_failure_and_retry() {
    let (sim, _d) = small_sim().await;
    for env in envs().await {
        let j = jit_setup(&env, &sim.ready).await;
        let (api, admin) = (&j.api, j.admin.as_str());
        let fresh = fresh_users(&j, &sim).await;
        // Three requesters with managers, and an app owner who is none of them nor their managers.
        let mut picked: Vec<(String, String)> = Vec::new();
        for (u, m) in &fresh {
            if picked
                .iter()
                .all(|(pu, pm)| pu != m && pm != u && pu != u && pm != m)
                && m != u
            {
                picked.push((u.clone(), m.clone()));
            }
            if picked.len() == 3 {
                break;
            }
        }
        assert_eq!(picked.len(), 3, "three users with distinct managers");
        let (_, ids) = api.get(admin, "/api/v1/identities?limit=1000").await;
        let owner = ids["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["kind"] == "user")
            .map(|i| i["id"].as_str().unwrap().to_owned())
            .find(|i| picked.iter().all(|(u, m)| u != i && m != i))
            .unwrap();
        // The second approver is a named identity (a policy step of kind identities).
        let (st, p) = api
            .post(
                admin,
                "/api/v1/policies",
                json!({"name": "two-step", "require_justification": true, "max_duration": 86400,
                "steps": [{"kind": "manager"}, {"kind": "identities", "identities": [owner]}]}),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{p}");
        let (st, rule) = api
            .post(
                admin,
                &format!("/api/v1/apps/{}/entitlement-rules", j.app),
                json!({"entitlements": [j.vr], "access_profiles": ["everyone"], "policy": "two-step"}),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{rule}");
        let (hook, got, calls) = hook_receiver().await;
        let (st, h) = api
            .post(
                admin,
                "/api/v1/webhooks",
                json!({"url": hook, "events": ["approval.requested"]}),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{h}");
        let (u1, m1) = &picked[0];
        let (t1, tm1, towner) = (
            user_token(&j, u1).await,
            user_token(&j, m1).await,
            user_token(&j, &owner).await,
        );
        // An attribute profile opens a rule to its members only.
        let (_, me1) = api.get(admin, &format!("/api/v1/identities/{u1}")).await;
        let dept = me1["department"]
            .as_str()
            .expect("users have a department")
            .to_owned();
        let (st, prof) = api
            .post(
                admin,
                "/api/v1/access-profiles",
                json!({"name": "same department", "kind": "attribute", "attributes": {"department": [dept]}}),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{prof}");
        let (st, e) = api
            .post(
                admin,
                "/api/v1/access-profiles",
                json!({"name": "bad", "kind": "attribute", "attributes": {"shoe_size": ["42"]}}),
            )
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{e}");
        let (st, _) = api
            .post(admin, &format!("/api/v1/apps/{}/entitlement-rules", j.app),
                json!({"resource_types": ["access"], "access_profiles": ["same department"], "policy": "two-step"}))
            .await;
        assert_eq!(st, StatusCode::CREATED);
        let (_, cat) = api.get(&t1, "/api/v1/catalog").await;
        assert!(
            cat["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["entitlement"] == j.access.as_str()),
            "{cat}"
        );
        let other = ids["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["kind"] == "user" && i["department"].is_string() && i["department"] != dept.as_str())
            .map(|i| i["id"].as_str().unwrap().to_owned())
            .expect("a user of another department");
        let to = user_token(&j, &other).await;
        let (_, cat) = api.get(&to, "/api/v1/catalog").await;
        let items = cat["items"].as_array().unwrap();
        assert!(
            items.iter().all(|i| i["entitlement"] != j.access.as_str()),
            "{cat}"
        );
        assert!(items.iter().any(|i| i["entitlement"] == j.vr.as_str()), "{cat}");
        let (st, _) = api
            .post(
                &to,
                "/api/v1/requests",
                json!({"entitlement": j.access, "app": j.app, "justification": "x"}),
            )
            .await;
        assert_eq!(st, StatusCode::FORBIDDEN, "not in the profile");
        let (st, e) = api
            .post(
                &t1,
                "/api/v1/requests",
                json!({"entitlement": j.vr, "duration": 3600}),
            )
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
        assert!(
            e["error"]["message"].as_str().unwrap().contains("justification"),
            "{e}"
        );
        let (st, r) = api
            .post(
                &t1,
                "/api/v1/requests",
                json!({"entitlement": j.vr, "justification": "on call", "duration": 3600}),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{r}");
        assert_eq!(r["state"], "pending_approval");
        assert_eq!(r["approvers"], json!([m1]));
        let rid = r["id"].as_str().unwrap().to_owned();
        let (st, _) = api
            .post(&t1, &format!("/api/v1/requests/{rid}/approve"), Value::Null)
            .await;
        assert_eq!(st, StatusCode::FORBIDDEN, "no self-approval");
        let (st, _) = api
            .post(&towner, &format!("/api/v1/requests/{rid}/approve"), Value::Null)
            .await;
        assert_eq!(st, StatusCode::FORBIDDEN, "not an approver of step 1");
        let (_, waiting) = api.get(&tm1, "/api/v1/approvals").await;
        assert_eq!(waiting["items"][0]["id"], rid.as_str(), "{waiting}");
        // The approver is told by webhook; the first delivery fails and is retried after its backoff on the
        // platform's clock, which moves only when the test moves it.
        let c = calls.clone();
        wait_until("first webhook attempt", || {
            c.load(std::sync::atomic::Ordering::SeqCst) >= 1
        })
        .await;
        for _ in 0..600 {
            if !got.lock().unwrap().is_empty() {
                break;
            }
            j.clock.advance(time::Duration::seconds(3));
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(!got.lock().unwrap().is_empty(), "webhook delivered after a retry");
        let first = got.lock().unwrap()[0].clone();
        assert_eq!(first["event"], "approval.requested", "{first}");
        assert_eq!(first["to"], json!([m1]));
        assert!(
            first["text"].as_str().unwrap().contains("pending_approval"),
            "{first}"
        );
        let (st, r) = api
            .post(
                &tm1,
                &format!("/api/v1/requests/{rid}/approve"),
                json!({"comment": "ok"}),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{r}");
        assert_eq!(
            (r["state"].as_str(), r["step"].as_u64()),
            (Some("pending_approval"), Some(1))
        );
        let (_, waiting) = api.get(&tm1, "/api/v1/approvals").await;
        assert_eq!(waiting["items"], json!([]));
        // Step 2: the tenant now refuses the write (permission removed): the request fails with the reason.
        let gone = strip_write_permissions(&sim, &sim.ready.client_id);
        let (st, r) = api
            .post(&towner, &format!("/api/v1/requests/{rid}/approve"), Value::Null)
            .await;
        assert_eq!(st, StatusCode::OK, "{r}");
        let r = wait_state(&j.api, &t1, &rid, "failed").await;
        let reason = r["reason"].as_str().unwrap();
        assert!(
            reason.contains("GroupMember.ReadWrite.All"),
            "the reason names the permission: {reason}"
        );
        let (st, _) = api
            .post(&t1, &format!("/api/v1/requests/{rid}/retry"), Value::Null)
            .await;
        assert_eq!(st, StatusCode::FORBIDDEN, "only admins and app owners retry");
        restore_permissions(&sim, gone);
        let (st, r) = api
            .post(admin, &format!("/api/v1/requests/{rid}/retry"), Value::Null)
            .await;
        assert_eq!(st, StatusCode::OK, "{r}");
        wait_state(&j.api, &t1, &rid, "provisioned").await;
        assert!(in_group(&sim, j.gid, u1.parse().unwrap()));
        // Revoked on demand by the requester.
        let (st, _) = api
            .post(&t1, &format!("/api/v1/requests/{rid}/revoke"), Value::Null)
            .await;
        assert_eq!(st, StatusCode::OK);
        wait_state(&j.api, &t1, &rid, "revoked").await;
        assert!(!in_group(&sim, j.gid, u1.parse().unwrap()));
        // Denial by the manager.
        let (u2, m2) = &picked[1];
        let (t2, tm2) = (user_token(&j, u2).await, user_token(&j, m2).await);
        let (_, r) = api
            .post(
                &t2,
                "/api/v1/requests",
                json!({"entitlement": j.vr, "justification": "curious"}),
            )
            .await;
        let rid2 = r["id"].as_str().unwrap().to_owned();
        assert_eq!(r["duration"], 86400, "omitted duration = the policy's maximum");
        let (st, r) = api
            .post(
                &tm2,
                &format!("/api/v1/requests/{rid2}/deny"),
                json!({"comment": "not needed"}),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{r}");
        assert_eq!(r["state"], "denied");
        assert!(r["reason"].as_str().unwrap().contains("not needed"));
        let (st, _) = api
            .post(&tm2, &format!("/api/v1/requests/{rid2}/approve"), Value::Null)
            .await;
        assert_eq!(st, StatusCode::CONFLICT, "a denied request stays denied");
        assert!(!in_group(&sim, j.gid, u2.parse().unwrap()));
        // Cancel by the requester while pending; others cannot see it.
        let (u3, _) = &picked[2];
        let t3 = user_token(&j, u3).await;
        let (_, r) = api
            .post(
                &t3,
                "/api/v1/requests",
                json!({"entitlement": j.vr, "justification": "later"}),
            )
            .await;
        let rid3 = r["id"].as_str().unwrap().to_owned();
        let (st, _) = api.get(&t2, &format!("/api/v1/requests/{rid3}")).await;
        assert_eq!(st, StatusCode::NOT_FOUND, "another user cannot see it");
        let (st, r) = api
            .post(&t3, &format!("/api/v1/requests/{rid3}/cancel"), Value::Null)
            .await;
        assert_eq!((st, r["state"].as_str()), (StatusCode::OK, Some("cancelled")));
        let (_, mine) = api.get(&t1, "/api/v1/requests?mine=true").await;
        assert_eq!(mine["items"].as_array().unwrap().len(), 1, "{mine}");
        let (_, all) = api.get(admin, "/api/v1/requests").await;
        assert_eq!(all["items"].as_array().unwrap().len(), 3);
        let (_, v) = api.get(admin, "/api/v1/audit/verify").await;
        assert_eq!(v["ok"], true, "{v}");
        j.server.stop().await;
    }
    sim.stop().await;
}

async fn slow_sim(latency_ms: u64) -> (steward_sim::Running, tempfile::TempDir) {
    let sim_dir = tempfile::tempdir().unwrap();
    let sim = steward_sim::start(steward_sim::Options {
        tenant: steward_sim::generate(steward_sim::Size::named("small").unwrap(), 7),
        settings: steward_sim::ctx::Settings {
            latency_ms,
            ..Default::default()
        },
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: false,
        proxy: None,
        state_dir: sim_dir.path().to_owned(),
    })
    .await
    .unwrap();
    (sim, sim_dir)
}

/// Graph writes of one kind the emulator has served (e.g. `POST` to group members).
fn writes(sim: &steward_sim::Running, method: &str, what: &str) -> u64 {
    sim.sim
        .stats
        .by_route
        .lock()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.starts_with(method) && k.contains(what))
        .map(|(_, n)| *n)
        .sum()
}

async fn count_audit(api: &Api, admin: &str, action: &str, target: &str) -> usize {
    let (_, log) = api
        .get(
            admin,
            &format!("/api/v1/audit?action={action}&target_id={target}&limit=1000"),
        )
        .await;
    log["items"].as_array().unwrap().len()
}

async fn auto_rule(j: &Jit) {
    let (st, p) = j
        .api
        .post(
            &j.admin,
            "/api/v1/policies",
            json!({"name": "auto", "steps": [{"kind": "auto_approve"}]}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{p}");
    let (st, r) = j
        .api
        .post(
            &j.admin,
            &format!("/api/v1/apps/{}/entitlement-rules", j.app),
            json!({"resource_types": ["virtual_role"], "access_profiles": ["everyone"], "policy": "auto"}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{r}");
}

/// A server that stops in the middle of provisioning, and one that stops in the middle of removing
/// expired access: the next server finishes the work, once.
#[tokio::test]
async fn jit_restart_during_provisioning_and_expiry() {
    let (sim, _d) = slow_sim(250).await;
    for env in envs().await {
        let j = jit_setup(&env, &sim.ready).await;
        auto_rule(&j).await;
        let (who, _) = fresh_users(&j, &sim).await.into_iter().next().unwrap();
        let u: uuid::Uuid = who.parse().unwrap();
        let ut = user_token(&j, &who).await;
        let (st, r) = j
            .api
            .post(
                &ut,
                "/api/v1/requests",
                json!({"entitlement": j.vr, "duration": 600}),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{r}");
        let rid = r["id"].as_str().unwrap().to_owned();
        for _ in 0..4000 {
            let (_, r) = j.api.get(&ut, &format!("/api/v1/requests/{rid}")).await;
            if r["state"] != "approved" {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let Jit {
            server,
            clock,
            admin,
            gid,
            ..
        } = j;
        server.stop().await;
        let b = steward_server::start(&env.opts, "127.0.0.1:0".parse().unwrap(), clock.clone())
            .await
            .unwrap();
        let api = Api::new(b.url());
        let (_, r) = api.get(&ut, &format!("/api/v1/requests/{rid}")).await;
        assert_eq!(
            r["state"], "provisioning",
            "the first server stopped mid-way: {r:#}"
        );
        // The dead server's lease runs out; the new one takes the task over.
        clock.advance(time::Duration::seconds(121));
        wait_state(&api, &ut, &rid, "provisioned").await;
        assert!(in_group(&sim, gid, u));
        assert_eq!(count_audit(&api, &admin, "request.provisioned", &rid).await, 1);
        // Expiry: stop the server as soon as the tenant shows the access gone, before it records it.
        clock.advance(time::Duration::seconds(601));
        wait_until("membership removed", || !in_group(&sim, gid, u)).await;
        b.stop().await;
        let c = steward_server::start(&env.opts, "127.0.0.1:0".parse().unwrap(), clock.clone())
            .await
            .unwrap();
        let api = Api::new(c.url());
        let (_, r) = api.get(&ut, &format!("/api/v1/requests/{rid}")).await;
        assert_eq!(
            r["state"], "provisioned",
            "the second server stopped before recording the expiry: {r:#}"
        );
        clock.advance(time::Duration::seconds(121));
        wait_state(&api, &ut, &rid, "expired").await;
        assert!(!in_group(&sim, gid, u));
        assert_eq!(count_audit(&api, &admin, "request.expired", &rid).await, 1);
        let (_, v) = api.get(&admin, "/api/v1/audit/verify").await;
        assert_eq!(v["ok"], true, "{v}");
        c.stop().await;
    }
    sim.stop().await;
}

/// Two servers on one PostgreSQL database: every request is provisioned and expired exactly once.
#[tokio::test]
async fn jit_two_servers_on_one_postgres_act_once() {
    let Some(env) = envs().await.into_iter().find(|e| e.backend == "postgres") else {
        return;
    };
    let (sim, _d) = small_sim().await;
    let j = jit_setup(&env, &sim.ready).await;
    auto_rule(&j).await;
    let b = steward_server::start(&env.opts, "127.0.0.1:0".parse().unwrap(), j.clock.clone())
        .await
        .unwrap();
    let api_b = Api::new(b.url());
    let users: Vec<String> = fresh_users(&j, &sim)
        .await
        .into_iter()
        .map(|(u, _)| u)
        .take(8)
        .collect();
    assert!(users.len() >= 4);
    sim.sim.stats.reset();
    let mut ids = Vec::new();
    for (n, u) in users.iter().enumerate() {
        let t = user_token(&j, u).await;
        let api = if n % 2 == 0 { &j.api } else { &api_b };
        let (st, r) = api
            .post(
                &t,
                "/api/v1/requests",
                json!({"entitlement": j.vr, "duration": 300}),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{r}");
        ids.push(r["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        wait_state(&j.api, &j.admin, id, "provisioned").await;
        assert_eq!(count_audit(&j.api, &j.admin, "request.provisioned", id).await, 1);
    }
    assert_eq!(
        writes(&sim, "POST", "/members/$ref"),
        users.len() as u64,
        "one membership write per request"
    );
    j.clock.advance(time::Duration::seconds(301));
    for id in &ids {
        wait_state(&j.api, &j.admin, id, "expired").await;
        assert_eq!(count_audit(&j.api, &j.admin, "request.expired", id).await, 1);
    }
    assert_eq!(
        writes(&sim, "DELETE", "/members/"),
        users.len() as u64,
        "one removal per request"
    );
    for u in &users {
        assert!(!in_group(&sim, j.gid, u.parse().unwrap()));
    }
    b.stop().await;
    j.server.stop().await;
    sim.stop().await;
}

/// Many grants due at once: removed together, confirmed by one partial sync instead of one listing of the
/// group per grant, each request expired and audited once, the tenant left without any of them.
#[tokio::test]
async fn jit_expiry_sweep_removes_due_grants_in_batches() {
    let (sim, _d) = small_sim().await;
    for env in envs().await {
        let j = jit_setup(&env, &sim.ready).await;
        auto_rule(&j).await;
        let users = fresh_users(&j, &sim).await;
        assert!(
            users.len() > 60,
            "the small tenant has enough users outside the group"
        );
        let (first, _) = &users[0];
        let ut = user_token(&j, first).await;
        let (st, r) = j
            .api
            .post(
                &ut,
                "/api/v1/requests",
                json!({"entitlement": j.vr, "duration": 300}),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{r}");
        let template = wait_state(&j.api, &ut, r["id"].as_str().unwrap(), "provisioned").await;
        let template: steward_platform::Request = serde_json::from_value(template).unwrap();
        // Access put in place outside the request flow, then imported as provisioned requests.
        let mut reqs = Vec::new();
        for (u, _) in &users[1..] {
            sim.sim
                .store
                .write()
                .unwrap()
                .add_group_member(j.gid, u.parse().unwrap())
                .unwrap();
            let mut r = template.clone();
            r.id = uuid::Uuid::new_v4().to_string();
            r.requester_id = u.clone();
            reqs.push(r);
        }
        let n = reqs.len() + 1;
        // Not provisioned: refused whole.
        let mut bad = reqs[0].clone();
        bad.state = steward_platform::RequestState::Approved;
        assert!(j.server.platform.import_provisioned(vec![bad]).await.is_err());
        assert_eq!(j.server.platform.import_provisioned(reqs).await.unwrap(), n - 1);
        sim.sim.stats.reset();
        j.clock.advance(time::Duration::seconds(301));
        for _ in 0..600 {
            let (_, p) = j
                .api
                .get(&j.admin, "/api/v1/requests?state=provisioned&limit=1")
                .await;
            if p["items"].as_array().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        for (u, _) in &users {
            assert!(
                !in_group(&sim, j.gid, u.parse().unwrap()),
                "{u} is still a member"
            );
        }
        let (_, log) = j
            .api
            .get(&j.admin, "/api/v1/audit?action=request.expired&limit=1000")
            .await;
        let mut targets: Vec<&str> = log["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["target_id"].as_str().unwrap())
            .collect();
        targets.sort();
        targets.dedup();
        assert_eq!(
            log["items"].as_array().unwrap().len(),
            n,
            "one expiry entry per request"
        );
        assert_eq!(targets.len(), n);
        assert_eq!(
            writes(&sim, "DELETE", "/members/"),
            n as u64,
            "one removal per grant"
        );
        // The group's members were listed by the confirming partial syncs only: one per claimed batch,
        // not one (or two) per grant.
        let listings = writes(&sim, "GET", "/groups/{id}/members");
        assert!(
            (1..=4).contains(&listings),
            "{listings} listings of the group's members for {n} removals"
        );
        let (_, v) = j.api.get(&j.admin, "/api/v1/audit/verify").await;
        assert_eq!(v["ok"], true, "{v}");
        j.server.stop().await;
    }
    sim.stop().await;
}

/// A connector attached to an app brings its entitlements with it: the Entra connector attached to a new
/// app "Microsoft Entra ID" makes directory roles requestable by kind. A role is granted through PIM with
/// the request's end time, so the tenant itself holds the end; the platform removes it on time as well.
/// Entitlements of a connector that cannot provision (an uploaded Baton sync) are neither offered nor
/// accepted.
#[tokio::test]
async fn jit_attached_connector_directory_role_ends_in_the_tenant() {
    let (sim, _d) = small_sim().await;
    let r = &sim.ready;
    for env in envs().await {
        let clock = Arc::new(ManualClock::new(time::OffsetDateTime::now_utc()));
        let server = steward_server::start(&env.opts, "127.0.0.1:0".parse().unwrap(), clock.clone())
            .await
            .unwrap();
        let admin = server.bootstrap_token.clone().unwrap();
        let api = Api::new(server.url());
        let (st, app) = api
            .post(&admin, "/api/v1/apps", json!({"name": "Microsoft Entra ID"}))
            .await;
        assert_eq!(st, StatusCode::CREATED, "{app}");
        let app = app["id"].as_str().unwrap().to_owned();
        let (st, c) = api
            .post(&admin, "/api/v1/connectors", json!({"kind": "entra", "name": "Directory", "app_id": app, "settings": {
                "entra_tenant_id": r.tenant_id, "entra_client_id": r.client_id, "entra_client_secret": r.client_secret,
                "login_endpoint": r.login, "graph_endpoint": r.graph, "provisioning": true}}))
            .await;
        assert_eq!(st, StatusCode::CREATED, "{c}");
        let cid = c["id"].as_str().unwrap().to_owned();
        sync_and_wait(&api, &admin, &cid).await;

        // The app's own access entitlement, then every entitlement of the attached connector.
        let (role_id, role_name, user) = {
            let s = sim.sim.read();
            let role = s
                .tenant
                .role_definitions
                .iter()
                .find(|d| {
                    s.tenant
                        .role_assignments
                        .iter()
                        .any(|a| a.role_definition_id == d.id)
                })
                .expect("a directory role with an assignment")
                .clone();
            let holders: Vec<uuid::Uuid> = s
                .tenant
                .role_assignments
                .iter()
                .filter(|a| a.role_definition_id == role.id)
                .map(|a| a.principal_id)
                .collect();
            let user = s
                .tenant
                .users
                .iter()
                .find(|u| u.account_enabled && !holders.contains(&u.id))
                .expect("a user without the role")
                .id;
            (role.id, role.display_name, user)
        };
        let assigned = format!("role:{role_id}:assigned");
        let (_, ents) = api.get(&admin, &format!("/api/v1/apps/{app}/entitlements")).await;
        let items = ents["items"].as_array().unwrap();
        assert_eq!(items[0]["kind"], "access", "{ents}");
        let row = items
            .iter()
            .find(|e| e["id"] == assigned.as_str())
            .unwrap_or_else(|| panic!("{assigned} is not among the app's entitlements"));
        assert_eq!(row["kind"], "role");
        assert_eq!(row["connector_id"], cid.as_str());
        assert_eq!(row["idp_entitlement_id"], assigned.as_str());
        assert!(row["name"].as_str().unwrap().contains(&role_name), "{row}");
        assert!(row["holders"].as_i64().unwrap() >= 1, "{row}");
        assert!(items.iter().any(|e| e["kind"] == "group"), "groups come too");

        let (st, p) = api
            .post(
                &admin,
                "/api/v1/policies",
                json!({"name": "auto", "steps": [{"kind": "auto_approve"}]}),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{p}");
        let (st, rule) = api
            .post(
                &admin,
                &format!("/api/v1/apps/{app}/entitlement-rules"),
                json!({"resource_types": ["role"], "access_profiles": ["everyone"], "policy": "auto", "max_duration": 7200}),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{rule}");
        // A rule naming an entitlement of the attached connector is accepted too; an unknown one is not.
        let (st, e) = api
            .post(
                &admin,
                &format!("/api/v1/apps/{app}/entitlement-rules"),
                json!({"entitlements": [assigned, "role:nope:assigned"], "access_profiles": ["everyone"], "policy": "auto"}),
            )
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{e}");
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap()
                .contains("role:nope:assigned"),
            "{e}"
        );

        let ut = {
            let (st, t) = api
                .post(&admin, "/api/v1/tokens", json!({"user": user.to_string()}))
                .await;
            assert_eq!(st, StatusCode::CREATED, "{t}");
            t["token"].as_str().unwrap().to_owned()
        };
        let (_, cat) = api.get(&ut, "/api/v1/catalog").await;
        let offered = cat["items"].as_array().unwrap();
        assert!(!offered.is_empty(), "{cat}");
        assert!(
            offered.iter().all(|i| i["kind"] == "role"),
            "only roles are requestable: {cat}"
        );
        assert!(offered.iter().any(|i| i["entitlement"] == assigned.as_str()));
        // Groups of the same connector are not covered by the rule.
        let group = items.iter().find(|e| e["kind"] == "group").unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let (st, e) = api
            .post(&ut, "/api/v1/requests", json!({"entitlement": group, "app": app}))
            .await;
        assert!(st.is_client_error(), "{st} {e}");

        let (st, req) = api
            .post(
                &ut,
                "/api/v1/requests",
                json!({"entitlement": assigned, "justification": "incident 4711", "duration": 3600}),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{req}");
        let id = req["id"].as_str().unwrap().to_owned();
        let done = wait_state(&api, &ut, &id, "provisioned").await;
        let expires = done["expires_at"].as_str().unwrap().to_owned();
        let kinds: Vec<&str> = done["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap())
            .collect();
        assert!(kinds.contains(&"end_in_tenant"), "{done:#}");
        // The tenant holds the assignment with the request's end time.
        let parse =
            |s: &str| time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap();
        let end_in_tenant = sim
            .sim
            .read()
            .tenant
            .role_assignments
            .iter()
            .find(|a| a.role_definition_id == role_id && a.principal_id == user)
            .map(|a| a.end.clone());
        let end_in_tenant = end_in_tenant
            .expect("the role is assigned in the tenant")
            .expect("with an end time");
        assert_eq!(parse(&end_in_tenant), parse(&expires));

        // The end comes: the platform removes the assignment too (the tenant may not have yet).
        clock.advance(time::Duration::seconds(3601));
        server.platform.wake_signal().notify_one();
        wait_state(&api, &ut, &id, "expired").await;
        assert!(
            !sim.sim
                .read()
                .tenant
                .role_assignments
                .iter()
                .any(|a| a.role_definition_id == role_id && a.principal_id == user),
            "the role assignment is gone from the tenant"
        );

        // An uploaded Baton sync attached to another app: its entitlements are listed, never offered.
        let (st, other) = api
            .post(&admin, "/api/v1/apps", json!({"name": "Fixture app"}))
            .await;
        assert_eq!(st, StatusCode::CREATED, "{other}");
        let other = other["id"].as_str().unwrap().to_owned();
        let (st, b) = api
            .post(
                &admin,
                "/api/v1/connectors",
                json!({"kind": "baton", "name": "fixture", "app_id": other, "identity_source": false}),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{b}");
        let bid = b["id"].as_str().unwrap().to_owned();
        let (st, s) = api
            .upload(&admin, &format!("/api/v1/connectors/{bid}/syncs"), fixture(false))
            .await;
        assert!(st.is_success(), "{st} {s}");
        let (st, rule) = api
            .post(
                &admin,
                &format!("/api/v1/apps/{other}/entitlement-rules"),
                json!({"resource_types": ["group"], "access_profiles": ["everyone"], "policy": "auto"}),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{rule}");
        let (_, cat) = api.get(&ut, "/api/v1/catalog").await;
        assert!(
            cat["items"]
                .as_array()
                .unwrap()
                .iter()
                .all(|i| i["app_id"] != other.as_str()),
            "{cat}"
        );
        let (st, e) = api
            .post(
                &ut,
                "/api/v1/requests",
                json!({"entitlement": "group:g-sales:member", "app": other, "justification": "x"}),
            )
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{e}");
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Entra ID connectors only"),
            "{e}"
        );
        let (_, v) = api.get(&admin, "/api/v1/audit/verify").await;
        assert_eq!(v["ok"], true, "{v}");
        server.stop().await;
    }
    sim.stop().await;
}

/// Approval steps with a deadline: an undecided step is escalated to its fallback approvers, then denied
/// when they do not decide either; a step decided in time is not touched by its deadline.
#[tokio::test]
async fn jit_approval_step_timeout_escalates_then_denies() {
    let (sim, _d) = small_sim().await;
    for env in envs().await {
        let j = jit_setup(&env, &sim.ready).await;
        let (api, admin) = (&j.api, j.admin.as_str());
        let users = fresh_users(&j, &sim).await;
        let (requester, first, second) = (&users[0].0, &users[1].0, &users[2].0);
        let (st, p) = api
            .post(
                admin,
                "/api/v1/policies",
                json!({"name": "escalating", "steps": [{
                "kind": "identities", "identities": [first], "timeout_secs": 3600,
                "on_timeout": "escalate", "fallback": [second]}]}),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{p}");
        let (st, p) = api
            .post(
                admin,
                "/api/v1/policies",
                json!({"name": "deadline", "steps": [{
                "kind": "identities", "identities": [first], "timeout_secs": 600}]}),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{p}");
        let (st, p) = api
            .post(admin, "/api/v1/policies", json!({"name": "bad", "steps": [{
                "kind": "identities", "identities": [first], "timeout_secs": 600, "on_timeout": "escalate"}]}))
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{p}");
        for (kind, policy) in [("access", "escalating"), ("virtual_role", "deadline")] {
            let (st, r) = api
                .post(
                    admin,
                    &format!("/api/v1/apps/{}/entitlement-rules", j.app),
                    json!({"resource_types": [kind], "access_profiles": ["everyone"], "policy": policy}),
                )
                .await;
            assert_eq!(st, StatusCode::CREATED, "{r}");
        }
        let (ut, t1, t2) = (
            user_token(&j, requester).await,
            user_token(&j, first).await,
            user_token(&j, second).await,
        );
        let waiting = |tok: String| async move {
            let (_, a) = api.get(&tok, "/api/v1/approvals").await;
            a["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        let file = |ent: String| {
            let ut = ut.clone();
            async move {
                let (st, r) = api
                    .post(
                        &ut,
                        "/api/v1/requests",
                        json!({"entitlement": ent, "justification": "audit"}),
                    )
                    .await;
                assert_eq!(st, StatusCode::CREATED, "{r}");
                assert_eq!(r["state"], "pending_approval", "{r}");
                r["id"].as_str().unwrap().to_owned()
            }
        };
        let esc = file(j.access.clone()).await;
        let timely = file(j.vr.clone()).await;
        // Decided in time: approved before its 600 s deadline, provisioned, and the deadline does nothing.
        let (st, r) = api
            .post(&t1, &format!("/api/v1/requests/{timely}/approve"), json!({}))
            .await;
        assert_eq!(st, StatusCode::OK, "{r}");
        wait_state(api, &ut, &timely, "provisioned").await;
        assert_eq!(waiting(t1.clone()).await, vec![esc.clone()]);
        assert!(waiting(t2.clone()).await.is_empty());

        // 3,600 s without a decision: escalated to the fallback approver.
        j.clock.advance(time::Duration::seconds(3601));
        j.server.platform.wake_signal().notify_one();
        let mut r = Value::Null;
        for _ in 0..300 {
            r = api.get(&ut, &format!("/api/v1/requests/{esc}")).await.1;
            if r["approvers"] == json!([second]) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(r["state"], "pending_approval", "{r:#}");
        assert_eq!(r["approvers"], json!([second]), "{r:#}");
        assert!(
            r["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["kind"] == "escalated"),
            "{r:#}"
        );
        assert!(waiting(t1.clone()).await.is_empty());
        assert_eq!(waiting(t2.clone()).await, vec![esc.clone()]);
        let (st, e) = api
            .post(&t1, &format!("/api/v1/requests/{esc}/approve"), json!({}))
            .await;
        assert_eq!(
            st,
            StatusCode::FORBIDDEN,
            "the first approver's turn is over: {e}"
        );
        // Another 3,600 s: denied, with the reason.
        j.clock.advance(time::Duration::seconds(3601));
        j.server.platform.wake_signal().notify_one();
        let r = wait_state(api, &ut, &esc, "denied").await;
        let reason = r["reason"].as_str().unwrap();
        assert!(
            reason.contains("no decision within 3600 s after escalation"),
            "{reason}"
        );
        assert!(waiting(t2.clone()).await.is_empty());
        // The timely request stayed as it was.
        let (_, t) = api.get(&ut, &format!("/api/v1/requests/{timely}")).await;
        assert_eq!(t["state"], "provisioned", "{t:#}");
        assert_eq!(count_audit(api, admin, "approval.escalated", &esc).await, 1);
        assert_eq!(count_audit(api, admin, "request.denied", &esc).await, 1);
        assert_eq!(count_audit(api, admin, "request.denied", &timely).await, 0);
        let (_, v) = api.get(admin, "/api/v1/audit/verify").await;
        assert_eq!(v["ok"], true, "{v}");
        j.server.stop().await;
    }
    sim.stop().await;
}

/// A webhook with a secret: every delivery carries a timestamp and an HMAC-SHA256 signature over
/// "<timestamp>.<body>" that the receiver can recompute, and the same delivery id on a retry; the secret
/// is never returned, never in the audit log, and not in the database in the clear.
#[tokio::test]
async fn webhook_deliveries_are_signed_and_the_secret_stays_encrypted() {
    const HOOK_SECRET: &str = "whsec-0123456789-abcdef";
    let (sim, _d) = small_sim().await;
    for env in envs().await {
        let j = jit_setup(&env, &sim.ready).await;
        let (api, admin) = (&j.api, j.admin.as_str());
        type Seen = Arc<Mutex<Vec<(axum::http::HeaderMap, Vec<u8>)>>>;
        let seen: Seen = Arc::default();
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (s2, c2) = (seen.clone(), calls.clone());
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |h: axum::http::HeaderMap, body: axum::body::Bytes| {
                let (seen, calls) = (s2.clone(), c2.clone());
                async move {
                    seen.lock().unwrap().push((h, body.to_vec()));
                    // The first delivery fails: the retry must carry the same delivery id.
                    if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::OK
                    }
                }
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });

        let (st, e) = api
            .post(admin, "/api/v1/webhooks", json!({"url": url, "secret": "short"}))
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{e}");
        assert!(e["error"]["message"].as_str().unwrap().contains("16"), "{e}");
        let (st, h) = api
            .post(
                admin,
                "/api/v1/webhooks",
                json!({"url": url, "format": "json",
                "events": ["approval.requested"], "secret": HOOK_SECRET}),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{h}");
        assert_eq!(h["signed"], true, "{h}");
        let (_, list) = api.get(admin, "/api/v1/webhooks").await;
        assert!(!list.to_string().contains(HOOK_SECRET), "{list}");
        assert_eq!(list["items"][0]["signed"], true, "{list}");

        let users = fresh_users(&j, &sim).await;
        let (requester, approver) = (&users[0].0, &users[1].0);
        let (st, p) = api
            .post(
                admin,
                "/api/v1/policies",
                json!({"name": "named", "steps": [{"kind": "identities", "identities": [approver]}]}),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{p}");
        let (st, r) = api
            .post(
                admin,
                &format!("/api/v1/apps/{}/entitlement-rules", j.app),
                json!({"resource_types": ["access"], "access_profiles": ["everyone"], "policy": "named"}),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{r}");
        let ut = user_token(&j, requester).await;
        let (st, r) = api
            .post(
                &ut,
                "/api/v1/requests",
                json!({"entitlement": j.access, "justification": "x"}),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{r}");
        // The retry is due after the backoff: move the clock until it has been delivered.
        for _ in 0..300 {
            if seen.lock().unwrap().len() >= 2 {
                break;
            }
            if !seen.lock().unwrap().is_empty() {
                j.clock.advance(time::Duration::seconds(30));
                j.server.platform.wake_signal().notify_one();
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 2, "one failed delivery and its retry");
        let header = |h: &axum::http::HeaderMap, n: &str| {
            h.get(n)
                .unwrap_or_else(|| panic!("no {n} header"))
                .to_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(
            header(&seen[0].0, "x-steward-delivery"),
            header(&seen[1].0, "x-steward-delivery")
        );
        for (h, body) in &seen {
            assert_eq!(header(h, "x-steward-event"), "approval.requested");
            let ts = header(h, "x-steward-timestamp");
            let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, HOOK_SECRET.as_bytes());
            let mut signed = ts.clone().into_bytes();
            signed.push(b'.');
            signed.extend_from_slice(body);
            let want = format!(
                "v1={}",
                hex::encode(aws_lc_rs::hmac::sign(&key, &signed).as_ref())
            );
            assert_eq!(header(h, "x-steward-signature"), want);
            let v: Value = serde_json::from_slice(body).unwrap();
            assert_eq!(v["event"], "approval.requested");
            assert_eq!(v["request"]["id"], r["id"]);
        }
        // Tampering is detectable: the same signature does not fit another body.
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, HOOK_SECRET.as_bytes());
        let forged = format!("{}.{{}}", header(&seen[0].0, "x-steward-timestamp"));
        assert_ne!(
            format!(
                "v1={}",
                hex::encode(aws_lc_rs::hmac::sign(&key, forged.as_bytes()).as_ref())
            ),
            header(&seen[0].0, "x-steward-signature")
        );
        let (_, log) = api.get(admin, "/api/v1/audit?format=jsonl&limit=1000").await;
        assert!(!log.to_string().contains(HOOK_SECRET));
        // Not in the clear anywhere in the database.
        match &env.opts.db_url {
            None => {
                for f in std::fs::read_dir(env.opts.data_dir.as_ref().unwrap()).unwrap() {
                    let p = f.unwrap().path();
                    if p.is_file() {
                        let bytes = std::fs::read(&p).unwrap();
                        assert!(
                            !bytes
                                .windows(HOOK_SECRET.len())
                                .any(|w| w == HOOK_SECRET.as_bytes()),
                            "the secret is in {} in the clear",
                            p.display()
                        );
                    }
                }
            }
            Some(u) => {
                let p = sqlx::PgPool::connect(u).await.unwrap();
                let (rows,): (String,) = sqlx::query_as(
                    "SELECT COALESCE(string_agg(events, ''), '') || COALESCE((SELECT string_agg(payload, '') FROM tasks), '') FROM webhooks",
                )
                .fetch_one(&p)
                .await
                .unwrap();
                assert!(!rows.is_empty());
                assert!(!rows.contains(HOOK_SECRET));
            }
        }
        j.server.stop().await;
    }
    sim.stop().await;
}

/// A burst of requests for one virtual role: every request is provisioned and confirmed, yet the group's
/// members are listed far fewer times than there are requests (confirmations waiting while a partial sync
/// runs are confirmed together by the next one).
#[tokio::test]
async fn jit_burst_confirmations_are_coalesced() {
    let (sim, _d) = small_sim().await;
    for env in envs().await {
        let j = jit_setup(&env, &sim.ready).await;
        auto_rule(&j).await;
        let users = fresh_users(&j, &sim).await;
        let n = 24.min(users.len());
        assert!(n >= 16, "the small tenant has {} fresh users", users.len());
        let mut toks = Vec::new();
        for (u, _) in users.iter().take(n) {
            toks.push(user_token(&j, u).await);
        }
        sim.sim.stats.reset();
        let filed = futures::future::join_all(toks.iter().map(|t| {
            j.api.post(
                t,
                "/api/v1/requests",
                json!({"entitlement": j.vr, "duration": 600}),
            )
        }))
        .await;
        let mut ids = Vec::new();
        for (st, r) in filed {
            assert_eq!(st, StatusCode::CREATED, "{r}");
            ids.push(r["id"].as_str().unwrap().to_owned());
        }
        for (id, t) in ids.iter().zip(&toks) {
            let r = wait_state(&j.api, t, id, "provisioned").await;
            assert!(
                r["events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|e| e["kind"] == "confirm"),
                "{r:#}"
            );
        }
        for (u, _) in users.iter().take(n) {
            assert!(in_group(&sim, j.gid, u.parse().unwrap()), "{u} was not added");
        }
        assert_eq!(
            writes(&sim, "POST", "/members/$ref"),
            n as u64,
            "one write per request"
        );
        let listings = writes(&sim, "GET", "/groups/{id}/members");
        assert!(
            listings * 2 <= n as u64,
            "{listings} listings of the group's members confirmed {n} grants"
        );
        j.server.stop().await;
    }
    sim.stop().await;
}
