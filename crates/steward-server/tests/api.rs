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

#[tokio::test]
async fn openapi_lists_every_route() {
    let env = envs().await.remove(0);
    let (server, api, admin) = start(&env).await;
    let (st, doc) = api.get("", "/api/v1/openapi.json").await;
    assert_eq!(st, StatusCode::OK);
    let routes = steward_server::routes();
    assert!(routes.len() >= 20);
    for r in &routes {
        assert!(
            doc["paths"][r.path][r.method].is_object(),
            "{} {} missing from the OpenAPI document",
            r.method,
            r.path
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
