//! The emulator over real HTTP(S): login, Graph and ARM as a client sees them.
//!
//! Each test starts its own emulator on free loopback ports (`steward_sim::start`), talks to it with
//! reqwest, and checks both the wire answers and the emulator's state afterwards.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::field_reassign_with_default
)]

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use steward_sim::ctx::Settings;
use steward_sim::model::*;
use steward_sim::{Options, Running, Size, generate, start};
use uuid::Uuid;

const GRAPH: &str = "https://graph.microsoft.com/.default";
const ARM: &str = "https://management.azure.com/.default";
const NO_PERMS_SECRET: &str = "nop8Q~no-permissions-at-all-secret-000000";

fn tenant(size: &str, seed: u64) -> Tenant {
    let mut t = generate(Size::named(size).unwrap(), seed);
    // An app with no permissions at all.
    let app_id = Uuid::from_u128(0x1234);
    t.applications.push(Application {
        id: Uuid::from_u128(0x1235),
        app_id,
        display_name: "No Permissions".into(),
        created: "2024-01-01T00:00:00Z".into(),
        sign_in_audience: None,
        secrets: vec![PasswordCredential {
            key_id: Uuid::from_u128(0x1236),
            display_name: None,
            secret: NO_PERMS_SECRET.into(),
            start: "2024-01-01T00:00:00Z".into(),
            end: "2099-01-01T00:00:00Z".into(),
        }],
        certificates: vec![],
        owners: vec![],
    });
    t.service_principals.push(ServicePrincipal {
        id: Uuid::from_u128(0x1237),
        app_id,
        display_name: "No Permissions".into(),
        kind: SpKind::Application,
        publisher: Publisher::Tenant,
        owner_organization: Some(t.tenant_id),
        account_enabled: true,
        app_role_assignment_required: false,
        app_roles: vec![],
        tags: vec![],
        homepage: None,
        owners: vec![],
        alternative_names: vec![],
        created: "2024-01-01T00:00:00Z".into(),
    });
    t
}

async fn emulator_with(t: Tenant, settings: Settings, tls: bool, proxy: bool) -> Running {
    start(Options {
        tenant: t,
        settings,
        listen: "127.0.0.1:0".parse().unwrap(),
        tls,
        proxy: proxy.then(|| "127.0.0.1:0".parse().unwrap()),
        state_dir: tempfile::tempdir().unwrap().keep(),
    })
    .await
    .unwrap()
}

async fn emulator(size: &str) -> Running {
    emulator_with(tenant(size, 7), Settings::default(), false, false).await
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn token_for(r: &Running, client_id: &str, secret: &str, scope: &str) -> String {
    let resp = http()
        .post(format!(
            "{}/{}/oauth2/v2.0/token",
            r.ready.login, r.ready.tenant_id
        ))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            ("client_secret", secret),
            ("scope", scope),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    v["access_token"].as_str().unwrap().to_string()
}

async fn token(r: &Running, scope: &str) -> String {
    token_for(r, &r.ready.client_id, &r.ready.client_secret, scope).await
}

async fn get(r: &Running, tok: &str, path: &str) -> (StatusCode, Value) {
    get_url(tok, &format!("{}{path}", r.ready.graph)).await
}

async fn get_url(tok: &str, url: &str) -> (StatusCode, Value) {
    let resp = http()
        .get(url)
        .bearer_auth(tok)
        .header("ConsistencyLevel", "eventual")
        .send()
        .await
        .unwrap();
    let s = resp.status();
    (s, resp.json().await.unwrap_or(Value::Null))
}

/// Follows nextLinks; returns every item.
async fn all_pages(tok: &str, first: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut url = first.to_string();
    loop {
        let (s, v) = get_url(tok, &url).await;
        assert_eq!(s, 200, "{url}: {v}");
        out.extend(v["value"].as_array().unwrap().iter().cloned());
        match v["@odata.nextLink"].as_str() {
            Some(n) => url = n.to_string(),
            None => return out,
        }
    }
}

async fn send(
    r: &Running,
    tok: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = http()
        .request(method, format!("{}{path}", r.ready.graph))
        .bearer_auth(tok);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let s = resp.status();
    (s, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn paging_returns_exactly_the_manifest() {
    let r = emulator_with(tenant("medium", 7), Settings::default(), false, false).await;
    let m = steward_sim::Manifest::of(&r.sim.read().tenant);
    let tok = token(&r, GRAPH).await;
    let users = all_pages(
        &tok,
        &format!("{}/v1.0/users?$top=999&$select=id,displayName", r.ready.graph),
    )
    .await;
    assert_eq!(users.len(), m.users);
    let ids: HashSet<&str> = users.iter().map(|u| u["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), m.users, "no duplicates across pages");
    // Default page size is 100, and the biggest group pages completely too.
    let (_, first) = get(&r, &tok, "/v1.0/groups").await;
    assert_eq!(first["value"].as_array().unwrap().len(), 100);
    let groups = all_pages(&tok, &format!("{}/v1.0/groups?$select=id", r.ready.graph)).await;
    assert_eq!(groups.len(), m.groups);
    let mut members_total = 0;
    for g in groups.iter().take(30) {
        let id = g["id"].as_str().unwrap();
        let members = all_pages(
            &tok,
            &format!("{}/v1.0/groups/{id}/members?$top=999&$select=id", r.ready.graph),
        )
        .await;
        let expected = r.sim.read().group(&id.parse().unwrap()).unwrap().members.len();
        assert_eq!(members.len(), expected);
        members_total += members.len();
    }
    assert!(
        members_total > 10_000,
        "the first groups include All Employees and departments"
    );
    // Stats saw every request.
    let stats: Value = http()
        .get(format!("{}/_sim/stats", r.ready.graph))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(stats["requests"].as_u64().unwrap() > 40);
    assert!(
        stats["by_route"]["GET /v1.0/groups/{id}/members"]
            .as_u64()
            .unwrap()
            >= 30
    );
}

#[tokio::test]
async fn query_rules_and_error_envelopes() {
    let r = emulator("small").await;
    let tok = token(&r, GRAPH).await;
    let (s, v) = get(&r, &tok, "/v1.0/users?$top=1000").await;
    assert_eq!(s, 400);
    assert_eq!(v["error"]["code"], "Request_BadRequest");
    assert_eq!(
        v["error"]["message"],
        "Invalid page size specified: '1000'. Must be between 1 and 999 inclusive."
    );
    assert!(v["error"]["innerError"]["request-id"].is_string());
    assert!(v["error"]["innerError"]["date"].is_string());
    let missing = Uuid::new_v4();
    let (s, v) = get(&r, &tok, &format!("/v1.0/users/{missing}")).await;
    assert_eq!(s, 404);
    assert_eq!(v["error"]["code"], "Request_ResourceNotFound");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&missing.to_string())
    );
    // Users default to Graph's default property set; $select picks; unknown properties are refused.
    let (_, v) = get(&r, &tok, "/v1.0/users?$top=1").await;
    let u = &v["value"][0];
    assert!(u.get("userPrincipalName").is_some() && u.get("accountEnabled").is_none());
    let (_, v) = get(&r, &tok, "/v1.0/users?$top=1&$select=accountEnabled,userType").await;
    let keys: BTreeSet<&str> = v["value"][0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, BTreeSet::from(["accountEnabled", "userType"]));
    let (s, v) = get(&r, &tok, "/v1.0/users?$select=nope").await;
    assert_eq!(s, 400);
    assert!(v["error"]["message"].as_str().unwrap().contains("'nope'"));
    // Advanced queries need ConsistencyLevel + $count.
    let resp = http()
        .get(format!(
            "{}/v1.0/users?$filter=userType ne 'Member'",
            r.ready.graph
        ))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let (s, v) = get(
        &r,
        &tok,
        "/v1.0/users?$filter=userType ne 'Member'&$count=true&$select=userType",
    )
    .await;
    assert_eq!(s, 200);
    let guests = r
        .sim
        .read()
        .tenant
        .users
        .iter()
        .filter(|u| u.user_type == UserType::Guest)
        .count();
    assert_eq!(v["@odata.count"], json!(guests));
    // $expand is capped at 20 with no nextLink.
    let (_, v) = get(&r, &tok, "/v1.0/groups?$top=1&$expand=members").await;
    let expanded = v["value"][0]["members"].as_array().unwrap();
    assert_eq!(expanded.len(), 20, "All Employees has far more than 20 members");
    assert!(v["value"][0].get("members@odata.nextLink").is_none());
    // Microsoft's headers.
    let resp = http()
        .get(format!("{}/v1.0/organization", r.ready.graph))
        .bearer_auth(&tok)
        .header("client-request-id", "abc")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["client-request-id"], "abc");
    assert!(resp.headers().contains_key("request-id"));
    assert!(resp.headers().contains_key("x-ms-ags-diagnostic"));
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json;odata.metadata=minimal")
    );
    // Mailbox purposes.
    let room = r
        .sim
        .read()
        .tenant
        .users
        .iter()
        .find(|u| u.mailbox == Some(MailboxPurpose::Room))
        .unwrap()
        .id;
    let (s, v) = get(&r, &tok, &format!("/v1.0/users/{room}/mailboxSettings")).await;
    assert_eq!(s, 200);
    assert_eq!(v["userPurpose"], "room");
    let guest = r
        .sim
        .read()
        .tenant
        .users
        .iter()
        .find(|u| u.mailbox.is_none())
        .unwrap()
        .id;
    let (s, v) = get(&r, &tok, &format!("/v1.0/users/{guest}/mailboxSettings")).await;
    assert_eq!(s, 404);
    assert_eq!(v["error"]["code"], "MailboxNotEnabledForRESTAPI");
}

#[tokio::test]
async fn token_endpoint_errors_are_microsofts() {
    let r = emulator("tiny").await;
    let url = format!("{}/{}/oauth2/v2.0/token", r.ready.login, r.ready.tenant_id);
    let post = |form: Vec<(&'static str, String)>| {
        let url = url.clone();
        async move {
            let resp = http().post(url).form(&form).send().await.unwrap();
            let s = resp.status();
            (s, resp.json::<Value>().await.unwrap())
        }
    };
    let base = |secret: &str| {
        vec![
            ("grant_type", "client_credentials".to_string()),
            ("client_id", r.ready.client_id.clone()),
            ("client_secret", secret.to_string()),
            ("scope", GRAPH.to_string()),
        ]
    };
    let (s, v) = post(base("wrong")).await;
    assert_eq!(s, 401);
    assert_eq!(v["error"], "invalid_client");
    assert_eq!(v["error_codes"], json!([7000215]));
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .starts_with("AADSTS7000215: ")
    );
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .contains("\r\nTrace ID: ")
    );
    let expired = r
        .sim
        .read()
        .tenant
        .applications
        .iter()
        .find(|a| a.display_name.contains("expired"))
        .unwrap()
        .clone();
    let mut f = base(&expired.secrets[0].secret);
    f[1].1 = expired.app_id.to_string();
    let (s, v) = post(f).await;
    assert_eq!((s.as_u16(), v["error_codes"][0].as_u64()), (401, Some(7000222)));
    let mut f = base("x");
    f[1].1 = Uuid::new_v4().to_string();
    let (s, v) = post(f).await;
    assert_eq!(
        (s.as_u16(), v["error"].as_str()),
        (400, Some("unauthorized_client"))
    );
    assert_eq!(v["error_codes"][0], 700016);
    let mut f = base(&r.ready.client_secret);
    f.retain(|(k, _)| *k != "client_secret");
    let (s, v) = post(f).await;
    assert_eq!((s.as_u16(), v["error_codes"][0].as_u64()), (401, Some(7000218)));
    let mut f = base(&r.ready.client_secret);
    f[3].1 = "https://example.com/.default".into();
    let (s, v) = post(f).await;
    assert_eq!((s.as_u16(), v["error_codes"][0].as_u64()), (400, Some(70011)));
    let resp = http()
        .post(format!(
            "{}/not-a-tenant.example/oauth2/v2.0/token",
            r.ready.login
        ))
        .form(&base(&r.ready.client_secret))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error_codes"][0], 90002);
    // A good token carries Microsoft's claims and the app's Graph permissions as roles, and verifies with
    // the published JWKS.
    let tok = token(&r, GRAPH).await;
    let jwks: Value = http()
        .get(format!(
            "{}/{}/discovery/v2.0/keys",
            r.ready.login, r.ready.tenant_id
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = &jwks["keys"][0];
    let dk = jsonwebtoken::DecodingKey::from_rsa_components(
        key["n"].as_str().unwrap(),
        key["e"].as_str().unwrap(),
    )
    .unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.set_audience(&["https://graph.microsoft.com"]);
    let data = jsonwebtoken::decode::<Value>(&tok, &dk, &v).unwrap();
    assert_eq!(data.claims["tid"], r.ready.tenant_id);
    assert_eq!(data.claims["appid"], r.ready.client_id);
    assert_eq!(
        data.claims["iss"],
        format!("https://sts.windows.net/{}/", r.ready.tenant_id)
    );
    let roles: Vec<&str> = data.claims["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert!(roles.contains(&"User.Read.All") && roles.contains(&"GroupMember.ReadWrite.All"));
    let meta: Value = http()
        .get(format!(
            "{}/{}/v2.0/.well-known/openid-configuration",
            r.ready.login, r.ready.tenant_id
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        meta["token_endpoint"],
        format!("{}/{}/oauth2/v2.0/token", r.ready.login, r.ready.tenant_id)
    );
}

#[tokio::test]
async fn access_tokens_are_checked_on_every_call() {
    // Tokens that live an hour for the checks (a one-second token expired mid-test on a loaded machine and
    // turned the read-only app's 403 into 401); expiry on an emulator of its own below.
    let r = emulator_with(tenant("tiny", 3), Settings::default(), false, false).await;
    let graph = token(&r, GRAPH).await;
    let arm = token(&r, ARM).await;
    // Wrong audience, both ways.
    let (s, v) = get(&r, &arm, "/v1.0/users").await;
    assert_eq!(s, 401);
    assert_eq!(v["error"]["code"], "InvalidAuthenticationToken");
    let resp = http()
        .get(format!("{}/subscriptions?api-version=2022-12-01", r.ready.arm))
        .bearer_auth(&graph)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["code"],
        "InvalidAuthenticationTokenAudience"
    );
    // No token, a forged one.
    let resp = http()
        .get(format!("{}/v1.0/users", r.ready.graph))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let mut forged = graph.clone();
    forged.push('x');
    assert_eq!(get(&r, &forged, "/v1.0/users").await.0, 401);
    // A missing permission: 403 Authorization_RequestDenied.
    let none = token_for(&r, &Uuid::from_u128(0x1234).to_string(), NO_PERMS_SECRET, GRAPH).await;
    let (s, v) = get(&r, &none, "/v1.0/users").await;
    assert_eq!(s, 403);
    assert_eq!(v["error"]["code"], "Authorization_RequestDenied");
    let reader = token_for(
        &r,
        r.ready.reader_client_id.as_ref().unwrap(),
        r.ready.reader_client_secret.as_ref().unwrap(),
        GRAPH,
    )
    .await;
    assert_eq!(get(&r, &reader, "/v1.0/users").await.0, 200);
    let g = r.sim.read().tenant.groups[3].id;
    let u = r.sim.read().tenant.users[5].id;
    let body = json!({"@odata.id": format!("https://graph.microsoft.com/v1.0/directoryObjects/{u}")});
    let (s, _) = send(
        &r,
        &reader,
        reqwest::Method::POST,
        &format!("/v1.0/groups/{g}/members/$ref"),
        Some(body),
    )
    .await;
    assert_eq!(s, 403, "the read-only app cannot write");
    // Expiry.
    let mut settings = Settings::default();
    settings.token_lifetime = 1;
    let short = emulator_with(tenant("tiny", 3), settings, false, false).await;
    let brief = token(&short, GRAPH).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (s, v) = get(&short, &brief, "/v1.0/users").await;
    assert_eq!(s, 401);
    assert!(v["error"]["message"].as_str().unwrap().contains("expired"));
    // The long-lived token is still good.
    assert_eq!(get(&r, &graph, "/v1.0/users").await.0, 200);
}

#[tokio::test]
async fn throttling_answers_429_and_a_patient_client_finishes() {
    let mut settings = Settings::default();
    settings.throttle = true;
    let r = emulator_with(tenant("tiny", 5), settings, false, false).await;
    let tok = token(&r, GRAPH).await;
    let g = r.sim.read().tenant.groups[0].id;
    // transitiveMembers costs 5 RU; a tiny tenant's bucket holds 3,500 and refills 350 RU/s.
    let path = format!("/v1.0/groups/{g}/transitiveMembers");
    // Other clients of the same app keep the bucket empty: each $batch takes 20 × 5 RU in one step on the
    // server, so four of them outrun the refill unless a batch round trip takes over a second; a stalled
    // process only refills the bucket, which they then drain again. They stop once the client under test
    // has been answered 429.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let batch = json!({"requests": (0..20)
        .map(|i| json!({"id": i.to_string(), "method": "GET", "url": format!("/groups/{g}/transitiveMembers")}))
        .collect::<Vec<_>>()});
    let mut pressure = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (url, tok, stop, batch) = (
            format!("{}/v1.0/$batch", r.ready.graph),
            tok.clone(),
            stop.clone(),
            batch.clone(),
        );
        pressure.spawn(async move {
            let client = http();
            let (mut ok, mut throttled) = (0u64, 0u64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let resp = client
                    .post(&url)
                    .bearer_auth(&tok)
                    .json(&batch)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 200);
                let v: Value = resp.json().await.unwrap();
                for item in v["responses"].as_array().unwrap() {
                    match item["status"].as_u64().unwrap() {
                        200 => ok += 1,
                        429 => {
                            assert!(item["headers"]["Retry-After"].is_string());
                            throttled += 1;
                        }
                        s => panic!("unexpected status {s} in a batch"),
                    }
                }
            }
            (ok, throttled)
        });
    }
    // The client under test: 5 RU at a time until the spent budget refuses it.
    let client = http();
    let url = format!("{}{path}", r.ready.graph);
    let mut answered = 0u64;
    let resp = loop {
        let resp = client.get(&url).bearer_auth(&tok).send().await.unwrap();
        if resp.status() == 429 {
            break resp;
        }
        assert_eq!(resp.status(), 200);
        answered += 1;
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut others_ok, mut others_throttled) = (0, 0);
    while let Some(res) = pressure.join_next().await {
        let (ok, throttled) = res.unwrap();
        others_ok += ok;
        others_throttled += throttled;
    }
    let retry: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=10).contains(&retry));
    assert!(resp.headers().contains_key("x-ms-throttle-scope"));
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "TooManyRequests");
    // It honours Retry-After and gets its 100 answers. Nobody else draws on the bucket any more, so the
    // first request after the wait is answered: the advertised wait is long enough.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    let mut waits = 1u64;
    let mut done = 0u64;
    while done < 100 {
        let resp = client.get(&url).bearer_auth(&tok).send().await.unwrap();
        if resp.status() == 429 {
            assert!(
                done > 0,
                "the first request after waiting Retry-After was throttled again"
            );
            let s: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
            waits += 1;
            tokio::time::sleep(Duration::from_secs(s)).await;
        } else {
            assert_eq!(resp.status(), 200);
            done += 1;
        }
    }
    // The emulator's counters agree with what the clients saw: every refusal counted, and only the answered
    // requests charged (5 RU each).
    let stats = r.sim.stats.json();
    assert_eq!(stats["throttled"].as_u64().unwrap(), waits + others_throttled);
    assert_eq!(
        stats["resource_units"].as_u64().unwrap(),
        5 * (answered + done + others_ok)
    );
}

#[tokio::test]
async fn faults_are_deterministic_for_a_seed() {
    async fn statuses(seed: u64) -> Vec<u16> {
        let mut settings = Settings::default();
        settings.seed = seed;
        settings.faults = Some("0.3:503,500".parse().unwrap());
        let r = emulator_with(tenant("tiny", 1), settings, false, false).await;
        let tok = token(&r, GRAPH).await;
        let mut out = Vec::new();
        for _ in 0..40 {
            out.push(get(&r, &tok, "/v1.0/organization").await.0.as_u16());
        }
        out
    }
    let a = statuses(11).await;
    let b = statuses(11).await;
    let c = statuses(12).await;
    assert_eq!(a, b);
    assert_ne!(a, c);
    let faults = a.iter().filter(|s| **s != 200).count();
    assert!((4..=24).contains(&faults), "{a:?}");
    assert!(a.iter().all(|s| [200, 500, 503].contains(s)));
}

#[tokio::test]
async fn transport_faults_break_the_connection() {
    let mut settings = Settings::default();
    settings.faults = Some("1:reset".parse().unwrap());
    let r = emulator_with(tenant("tiny", 1), settings, false, false).await;
    // The token endpoint is not faulted; Graph is.
    let tok = token(&r, GRAPH).await;
    let result = async {
        let resp = http()
            .get(format!("{}/v1.0/users", r.ready.graph))
            .bearer_auth(&tok)
            .send()
            .await?;
        resp.bytes().await
    }
    .await;
    assert!(result.is_err(), "a reset must surface as a transport error");
}

#[tokio::test]
async fn truncation_revocation_and_latency() {
    let settings = Settings {
        faults: Some("1:truncate".parse().unwrap()),
        ..Settings::default()
    };
    let r = emulator_with(tenant("tiny", 1), settings, false, false).await;
    let tok = token(&r, GRAPH).await;
    // Depending on buffering the break shows when the headers arrive or while the body is read.
    let result = async {
        let resp = http()
            .get(format!("{}/v1.0/users", r.ready.graph))
            .bearer_auth(&tok)
            .send()
            .await?;
        resp.bytes().await
    }
    .await;
    assert!(
        result.is_err(),
        "a truncated body must surface as a transport error"
    );

    let settings = Settings {
        faults: Some("1:revoke".parse().unwrap()),
        ..Settings::default()
    };
    let r = emulator_with(tenant("tiny", 1), settings, false, false).await;
    let tok = token(&r, GRAPH).await;
    let (s, v) = get(&r, &tok, "/v1.0/organization").await;
    assert_eq!(s, 401);
    assert_eq!(v["error"]["code"], "InvalidAuthenticationToken");

    let settings = Settings {
        latency_ms: 150,
        ..Settings::default()
    };
    let r = emulator_with(tenant("tiny", 1), settings, false, false).await;
    let tok = token(&r, GRAPH).await;
    let t0 = std::time::Instant::now();
    assert_eq!(get(&r, &tok, "/v1.0/organization").await.0, 200);
    assert!(
        t0.elapsed() >= Duration::from_millis(150),
        "the latency setting delays answers"
    );
}

#[tokio::test]
async fn directory_objects_and_get_by_ids() {
    let r = emulator("tiny").await;
    let tok = token(&r, GRAPH).await;
    let (u, g) = {
        let st = r.sim.read();
        (st.tenant.users[2].id, st.tenant.groups[1].id)
    };
    let (s, v) = get(&r, &tok, &format!("/v1.0/directoryObjects/{g}")).await;
    assert_eq!(s, 200);
    assert_eq!(v["@odata.type"], "#microsoft.graph.group");
    let body = json!({"ids": [u, g, Uuid::new_v4()], "types": ["user"]});
    let (s, v) = send(
        &r,
        &tok,
        reqwest::Method::POST,
        "/v1.0/directoryObjects/getByIds",
        Some(body),
    )
    .await;
    assert_eq!(s, 200);
    let found = v["value"].as_array().unwrap();
    assert_eq!(
        found.len(),
        1,
        "only users were asked for; unknown ids are skipped"
    );
    assert_eq!(found[0]["id"], json!(u));
}

#[tokio::test]
async fn group_writes_change_state_with_microsofts_answers() {
    let r = emulator("small").await;
    let tok = token(&r, GRAPH).await;
    let (g, owners, outsider) = {
        let st = r.sim.read();
        let g = st
            .tenant
            .groups
            .iter()
            .find(|g| g.membership_rule.is_none() && !g.on_premises_sync_enabled && g.owners.len() == 1)
            .unwrap();
        let outsider = st
            .tenant
            .users
            .iter()
            .find(|u| !g.members.contains(&u.id) && !g.owners.contains(&u.id))
            .unwrap()
            .id;
        (g.id, g.owners.clone(), outsider)
    };
    let body = json!({"@odata.id": format!("https://graph.microsoft.com/v1.0/directoryObjects/{outsider}")});
    let path = format!("/v1.0/groups/{g}/members/$ref");
    let (s, _) = send(&r, &tok, reqwest::Method::POST, &path, Some(body.clone())).await;
    assert_eq!(s, 204);
    assert!(r.sim.read().group(&g).unwrap().members.contains(&outsider));
    let (s, v) = send(&r, &tok, reqwest::Method::POST, &path, Some(body)).await;
    assert_eq!(s, 400);
    assert_eq!(
        v["error"]["message"],
        "One or more added object references already exist for the following modified properties: 'members'."
    );
    let members = all_pages(
        &tok,
        &format!("{}/v1.0/groups/{g}/members?$select=id", r.ready.graph),
    )
    .await;
    assert!(members.iter().any(|m| m["id"] == json!(outsider)));
    let del = format!("/v1.0/groups/{g}/members/{outsider}/$ref");
    assert_eq!(send(&r, &tok, reqwest::Method::DELETE, &del, None).await.0, 204);
    let (s, v) = send(&r, &tok, reqwest::Method::DELETE, &del, None).await;
    assert_eq!(s, 404);
    assert_eq!(v["error"]["code"], "Request_ResourceNotFound");
    assert!(!r.sim.read().group(&g).unwrap().members.contains(&outsider));
    // The last owner cannot be removed.
    let (s, v) = send(
        &r,
        &tok,
        reqwest::Method::DELETE,
        &format!("/v1.0/groups/{g}/owners/{}/$ref", owners[0]),
        None,
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(
        v["error"]["message"],
        "The group must have at least one owner, hence this owner cannot be removed."
    );
    // Dynamic and on-prem synced groups refuse membership writes.
    let (dynamic, synced) = {
        let st = r.sim.read();
        (
            st.tenant
                .groups
                .iter()
                .find(|g| g.membership_rule.is_some())
                .unwrap()
                .id,
            st.tenant
                .groups
                .iter()
                .find(|g| g.on_premises_sync_enabled)
                .unwrap()
                .id,
        )
    };
    for target in [dynamic, synced] {
        let body =
            json!({"@odata.id": format!("https://graph.microsoft.com/v1.0/directoryObjects/{outsider}")});
        let (s, _) = send(
            &r,
            &tok,
            reqwest::Method::POST,
            &format!("/v1.0/groups/{target}/members/$ref"),
            Some(body),
        )
        .await;
        assert_eq!(s, 400);
    }
}

#[tokio::test]
async fn assignment_and_role_writes() {
    let r = emulator("small").await;
    let tok = token(&r, GRAPH).await;
    let (sp, user) = {
        let st = r.sim.read();
        let sp = st
            .tenant
            .service_principals
            .iter()
            .find(|s| s.publisher == Publisher::ThirdParty && !s.app_roles.is_empty())
            .unwrap()
            .clone();
        let assigned: HashSet<Uuid> = st
            .tenant
            .app_role_assignments
            .iter()
            .filter(|a| a.resource_id == sp.id)
            .map(|a| a.principal_id)
            .collect();
        let user = st
            .tenant
            .users
            .iter()
            .find(|u| !assigned.contains(&u.id))
            .unwrap()
            .id;
        (sp, user)
    };
    let role = sp.app_roles[0].id;
    let body = json!({"principalId": user, "resourceId": sp.id, "appRoleId": role});
    let path = format!("/v1.0/servicePrincipals/{}/appRoleAssignedTo", sp.id);
    let (s, v) = send(&r, &tok, reqwest::Method::POST, &path, Some(body.clone())).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["principalType"], "User");
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 43);
    let (s, v) = send(&r, &tok, reqwest::Method::POST, &path, Some(body)).await;
    assert_eq!(s, 400);
    assert_eq!(
        v["error"]["message"],
        "Permission being assigned already exists on the object"
    );
    let listed = all_pages(&tok, &format!("{}{path}?$top=999", r.ready.graph)).await;
    assert!(listed.iter().any(|a| a["id"] == json!(id)));
    assert_eq!(
        send(&r, &tok, reqwest::Method::DELETE, &format!("{path}/{id}"), None)
            .await
            .0,
        204
    );
    assert_eq!(
        send(&r, &tok, reqwest::Method::DELETE, &format!("{path}/{id}"), None)
            .await
            .0,
        404
    );
    // Directory roles, active and eligible with an end time.
    let role_def = steward_sim::catalog::DIRECTORY_ROLES[5].0;
    let body = json!({"roleDefinitionId": role_def, "principalId": user, "directoryScopeId": "/"});
    let (s, v) = send(
        &r,
        &tok,
        reqwest::Method::POST,
        "/v1.0/roleManagement/directory/roleAssignments",
        Some(body.clone()),
    )
    .await;
    assert_eq!(s, 201);
    let ra = v["id"].as_str().unwrap().to_string();
    let (s, v) = send(
        &r,
        &tok,
        reqwest::Method::POST,
        "/v1.0/roleManagement/directory/roleAssignments",
        Some(body),
    )
    .await;
    assert_eq!(s, 400);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("A conflicting object")
    );
    assert_eq!(
        send(
            &r,
            &tok,
            reqwest::Method::DELETE,
            &format!("/v1.0/roleManagement/directory/roleAssignments/{ra}"),
            None
        )
        .await
        .0,
        204
    );
    let end = "2031-01-01T00:00:00Z";
    let body = json!({"action": "adminAssign", "justification": "test", "roleDefinitionId": role_def, "directoryScopeId": "/",
        "principalId": user, "scheduleInfo": {"startDateTime": "2030-01-01T00:00:00Z", "expiration": {"type": "afterDateTime", "endDateTime": end}}});
    let (s, v) = send(
        &r,
        &tok,
        reqwest::Method::POST,
        "/v1.0/roleManagement/directory/roleEligibilityScheduleRequests",
        Some(body.clone()),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["status"], "Provisioned");
    let (s, v) = send(
        &r,
        &tok,
        reqwest::Method::POST,
        "/v1.0/roleManagement/directory/roleEligibilityScheduleRequests",
        Some(body.clone()),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(v["error"]["code"], "RoleAssignmentExists");
    let sched = all_pages(
        &tok,
        &format!(
            "{}/v1.0/roleManagement/directory/roleEligibilitySchedules?$filter=principalId eq '{user}'",
            r.ready.graph
        ),
    )
    .await;
    assert_eq!(sched.len(), 1);
    assert_eq!(sched[0]["scheduleInfo"]["expiration"]["endDateTime"], end);
    let mut remove = body;
    remove["action"] = json!("adminRemove");
    let (s, v) = send(
        &r,
        &tok,
        reqwest::Method::POST,
        "/v1.0/roleManagement/directory/roleEligibilityScheduleRequests",
        Some(remove),
    )
    .await;
    assert_eq!((s.as_u16(), v["status"].as_str()), (201, Some("Revoked")));
    assert!(
        !r.sim
            .read()
            .tenant
            .role_eligibilities
            .iter()
            .any(|e| e.principal_id == user)
    );
}

#[tokio::test]
async fn delta_rounds_see_writes() {
    let r = emulator("small").await;
    let tok = token(&r, GRAPH).await;
    let first = format!("{}/v1.0/groups/delta?$select=displayName,members", r.ready.graph);
    let mut url = first;
    let mut seen_groups = HashSet::new();
    let mut member_refs = 0;
    let delta_link = loop {
        let (s, v) = get_url(&tok, &url).await;
        assert_eq!(s, 200);
        for g in v["value"].as_array().unwrap() {
            seen_groups.insert(g["id"].as_str().unwrap().to_string());
            member_refs += g["members@delta"].as_array().map(Vec::len).unwrap_or(0);
        }
        if let Some(d) = v["@odata.deltaLink"].as_str() {
            break d.to_string();
        }
        url = v["@odata.nextLink"].as_str().unwrap().to_string();
    };
    let m = steward_sim::Manifest::of(&r.sim.read().tenant);
    assert_eq!(seen_groups.len(), m.groups);
    assert_eq!(member_refs, m.group_memberships_direct);
    // Nothing changed: an empty round.
    let (_, v) = get_url(&tok, &delta_link).await;
    assert_eq!(v["value"].as_array().unwrap().len(), 0);
    let next_link = v["@odata.deltaLink"].as_str().unwrap().to_string();
    // Add and remove members, then the next round shows the net change.
    let (g, a, b) = {
        let st = r.sim.read();
        let g = st
            .tenant
            .groups
            .iter()
            .find(|g| g.membership_rule.is_none() && !g.on_premises_sync_enabled && !g.members.is_empty())
            .unwrap();
        let outsider = st
            .tenant
            .users
            .iter()
            .find(|u| !g.members.contains(&u.id))
            .unwrap()
            .id;
        (g.id, outsider, g.members[0])
    };
    let body = json!({"@odata.id": format!("https://graph.microsoft.com/v1.0/directoryObjects/{a}")});
    assert_eq!(
        send(
            &r,
            &tok,
            reqwest::Method::POST,
            &format!("/v1.0/groups/{g}/members/$ref"),
            Some(body)
        )
        .await
        .0,
        204
    );
    assert_eq!(
        send(
            &r,
            &tok,
            reqwest::Method::DELETE,
            &format!("/v1.0/groups/{g}/members/{b}/$ref"),
            None
        )
        .await
        .0,
        204
    );
    let (_, v) = get_url(&tok, &next_link).await;
    let changed = v["value"].as_array().unwrap();
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0]["id"], json!(g));
    let md = changed[0]["members@delta"].as_array().unwrap();
    assert!(
        md.iter()
            .any(|x| x["id"] == json!(a) && x.get("@removed").is_none())
    );
    assert!(
        md.iter()
            .any(|x| x["id"] == json!(b) && x["@removed"]["reason"] == "deleted")
    );
    // A token that is not ours is refused.
    let (s, _) = get_url(
        &tok,
        &format!("{}/v1.0/groups/delta?$deltatoken=bogus", r.ready.graph),
    )
    .await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn batch_semantics() {
    let r = emulator("tiny").await;
    let tok = token(&r, GRAPH).await;
    let u = r.sim.read().tenant.users[0].id;
    let body = json!({"requests": [
        {"id": "1", "method": "GET", "url": format!("/users/{u}?$select=id")},
        {"id": "2", "method": "GET", "url": format!("/users/{}", Uuid::new_v4())},
        {"id": "3", "method": "GET", "url": "/organization", "dependsOn": ["2"]},
        {"id": "4", "method": "GET", "url": "/users?$top=1000"},
    ]});
    let (s, v) = send(&r, &tok, reqwest::Method::POST, "/v1.0/$batch", Some(body)).await;
    assert_eq!(s, 200);
    let by_id: BTreeMap<&str, &Value> = v["responses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["id"].as_str().unwrap(), x))
        .collect();
    assert_eq!(by_id["1"]["status"], 200);
    assert_eq!(by_id["1"]["body"]["id"], json!(u));
    assert_eq!(by_id["2"]["status"], 404);
    assert_eq!(by_id["3"]["status"], 424);
    assert_eq!(by_id["4"]["status"], 400);
    let dup = json!({"requests": [{"id": "1", "method": "GET", "url": "/organization"}, {"id": "1", "method": "GET", "url": "/organization"}]});
    assert_eq!(
        send(&r, &tok, reqwest::Method::POST, "/v1.0/$batch", Some(dup))
            .await
            .0,
        400
    );
    let many: Vec<Value> = (0..21)
        .map(|i| json!({"id": i.to_string(), "method": "GET", "url": "/organization"}))
        .collect();
    assert_eq!(
        send(
            &r,
            &tok,
            reqwest::Method::POST,
            "/v1.0/$batch",
            Some(json!({"requests": many}))
        )
        .await
        .0,
        400
    );
}

#[tokio::test]
async fn arm_scopes_writes_and_authorization() {
    let r = emulator("small").await;
    let tok = token(&r, ARM).await;
    let arm = |p: &str| format!("{}{p}", r.ready.arm);
    let (s, v) = get_url(&tok, &arm("/subscriptions?api-version=2022-12-01")).await;
    assert_eq!(s, 200);
    let subs = v["value"].as_array().unwrap();
    assert_eq!(subs.len(), r.sim.read().tenant.azure.subscriptions.len());
    let sub = subs[0]["subscriptionId"].as_str().unwrap().to_string();
    let (s, v) = get_url(&tok, &arm("/subscriptions")).await;
    assert_eq!(s, 400);
    assert_eq!(v["error"]["code"], "MissingApiVersionParameter");
    let (s, _) = get_url(&tok, &arm("/subscriptions?api-version=1999-01-01")).await;
    assert_eq!(s, 400);
    // Listing at subscription scope includes assignments below it; atScope() does not.
    let list = format!(
        "/subscriptions/{sub}/providers/Microsoft.Authorization/roleAssignments?api-version=2022-04-01"
    );
    let all = all_pages(&tok, &arm(&list)).await;
    let at = all_pages(&tok, &arm(&format!("{list}&$filter=atScope()"))).await;
    let truth: Vec<AzureRoleAssignment> = r
        .sim
        .read()
        .tenant
        .azure
        .role_assignments
        .iter()
        .filter(|a| a.scope.starts_with(&format!("/subscriptions/{sub}")))
        .cloned()
        .collect();
    assert_eq!(all.len(), truth.len());
    assert_eq!(
        at.len(),
        truth
            .iter()
            .filter(|a| a.scope == format!("/subscriptions/{sub}"))
            .count()
    );
    assert!(all.iter().any(|a| {
        a["properties"]["scope"]
            .as_str()
            .unwrap()
            .to_ascii_lowercase()
            .contains("/resourcegroups/")
    }));
    // Listing at a resource group includes what is inherited from the subscription (above it).
    let some_rg = r
        .sim
        .read()
        .tenant
        .azure
        .resource_groups
        .iter()
        .find(|g| g.subscription_id.to_string() == sub)
        .unwrap()
        .name
        .clone();
    let at_rg = all_pages(&tok, &arm(&format!("/subscriptions/{sub}/resourceGroups/{some_rg}/providers/Microsoft.Authorization/roleAssignments?api-version=2022-04-01&$filter=atScope()"))).await;
    assert!(at_rg.iter().any(|a| {
        a["properties"]["scope"]
            .as_str()
            .unwrap()
            .eq_ignore_ascii_case(&format!("/subscriptions/{sub}"))
    }));
    assert!(at_rg.iter().all(|a| {
        !a["properties"]["scope"]
            .as_str()
            .unwrap()
            .contains("/providers/Microsoft.Storage")
    }));
    // Create at a resource group; a duplicate under a new name is 409; delete is 200 then 204.
    let rg = r
        .sim
        .read()
        .tenant
        .azure
        .resource_groups
        .iter()
        .find(|g| g.subscription_id.to_string() == sub)
        .unwrap()
        .name
        .clone();
    let user = r.sim.read().tenant.users[4].id;
    let reader = "acdd72a7-3385-48ef-bd42-f606fba81ae7";
    let body = json!({"properties": {"roleDefinitionId": format!("/subscriptions/{sub}/providers/Microsoft.Authorization/roleDefinitions/{reader}"), "principalId": user, "principalType": "User"}});
    let name = Uuid::new_v4();
    let url = arm(&format!(
        "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Authorization/roleAssignments/{name}?api-version=2022-04-01"
    ));
    let resp = http()
        .put(&url)
        .bearer_auth(&tok)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        v["properties"]["scope"],
        format!("/subscriptions/{sub}/resourceGroups/{rg}")
    );
    let url2 = arm(&format!(
        "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Authorization/roleAssignments/{}?api-version=2022-04-01",
        Uuid::new_v4()
    ));
    let resp = http()
        .put(&url2)
        .bearer_auth(&tok)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 409);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["code"],
        "RoleAssignmentExists"
    );
    let mut wrong = body.clone();
    wrong["properties"]["principalType"] = json!("Group");
    let resp = http()
        .put(&url2)
        .bearer_auth(&tok)
        .json(&wrong)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(
        http()
            .delete(&url)
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        http()
            .delete(&url)
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    // The read-only app may read but not assign: 403 AuthorizationFailed.
    let rtok = token_for(
        &r,
        r.ready.reader_client_id.as_ref().unwrap(),
        r.ready.reader_client_secret.as_ref().unwrap(),
        ARM,
    )
    .await;
    assert_eq!(get_url(&rtok, &arm(&list)).await.0, 200);
    let resp = http()
        .put(&url)
        .bearer_auth(&rtok)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "AuthorizationFailed");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Microsoft.Authorization/roleAssignments/write")
    );
    // An app without any role sees no subscriptions.
    let none = token_for(&r, &Uuid::from_u128(0x1234).to_string(), NO_PERMS_SECRET, ARM).await;
    let (_, v) = get_url(&none, &arm("/subscriptions?api-version=2022-12-01")).await;
    assert_eq!(v["value"].as_array().unwrap().len(), 0);
    // Resource groups with the same name in two subscriptions stay distinct.
    let rgs = all_pages(
        &tok,
        &arm(&format!(
            "/subscriptions/{sub}/resourcegroups?api-version=2021-04-01"
        )),
    )
    .await;
    assert!(rgs.iter().all(|g| {
        g["id"]
            .as_str()
            .unwrap()
            .starts_with(&format!("/subscriptions/{sub}/"))
    }));
}

#[tokio::test]
async fn throttled_arm_says_subscription_requests_throttled() {
    let mut settings = Settings::default();
    settings.throttle = true;
    let r = emulator_with(tenant("tiny", 2), settings, false, false).await;
    let tok = token(&r, ARM).await;
    let sub = r.sim.read().tenant.azure.subscriptions[0].subscription_id;
    let url = format!(
        "{}/subscriptions/{sub}/resourcegroups?api-version=2021-04-01",
        r.ready.arm
    );
    let mut got = None;
    for _ in 0..2000 {
        let resp = http().get(&url).bearer_auth(&tok).send().await.unwrap();
        if resp.status() == 429 {
            got = Some(resp);
            break;
        }
        assert!(
            resp.headers()
                .contains_key("x-ms-ratelimit-remaining-subscription-reads")
        );
    }
    let resp = got.expect("ARM's read bucket holds 250");
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["code"],
        "SubscriptionRequestsThrottled"
    );
}

fn client_with_ca(ca_file: &str, proxy: Option<&str>) -> reqwest::Client {
    let pem = std::fs::read(ca_file).unwrap();
    let ca = reqwest::Certificate::from_pem(&pem).unwrap();
    let mut b = reqwest::Client::builder()
        .tls_certs_only([ca])
        .timeout(Duration::from_secs(20));
    if let Some(p) = proxy {
        b = b.proxy(reqwest::Proxy::https(format!("http://{p}")).unwrap());
    }
    b.build().unwrap()
}

#[tokio::test]
async fn tls_and_the_proxy_serve_microsofts_own_host_names() {
    let r = emulator_with(tenant("tiny", 4), Settings::default(), true, true).await;
    assert!(r.ready.graph.starts_with("https://"));
    let ca = r.ready.ca_file.clone().unwrap();
    // Direct HTTPS.
    let c = client_with_ca(&ca, None);
    let resp = c
        .post(format!(
            "{}/{}/oauth2/v2.0/token",
            r.ready.login, r.ready.tenant_id
        ))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", r.ready.client_id.as_str()),
            ("client_secret", r.ready.client_secret.as_str()),
            ("scope", GRAPH),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Through the proxy, with Microsoft's real URLs.
    let p = client_with_ca(&ca, r.ready.proxy.as_deref());
    let resp = p
        .post(format!(
            "https://login.microsoftonline.com/{}/oauth2/v2.0/token",
            r.ready.tenant_id
        ))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", r.ready.client_id.as_str()),
            ("client_secret", r.ready.client_secret.as_str()),
            ("scope", GRAPH),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let tok = resp.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let resp = p
        .get("https://graph.microsoft.com/v1.0/users?$top=2")
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["value"].as_array().unwrap().len(), 2);
    let next = v["@odata.nextLink"].as_str().unwrap();
    assert!(
        next.starts_with("https://graph.microsoft.com/v1.0/users?"),
        "{next}"
    );
    let arm_tok = {
        let resp = p
            .post(format!(
                "https://login.microsoftonline.com/{}/oauth2/v2.0/token",
                r.ready.tenant_id
            ))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", r.ready.client_id.as_str()),
                ("client_secret", r.ready.client_secret.as_str()),
                ("scope", ARM),
            ])
            .send()
            .await
            .unwrap();
        resp.json::<Value>().await.unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let resp = p
        .get("https://management.azure.com/subscriptions?api-version=2022-12-01")
        .bearer_auth(&arm_tok)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Other hosts are refused by the proxy.
    assert!(p.get("https://example.com/").send().await.is_err());
}

#[tokio::test]
async fn certificate_client_assertion() {
    use base64::Engine;
    use sha1::Digest;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["steward-connector".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let mut t = tenant("tiny", 9);
    let app = t
        .applications
        .iter_mut()
        .find(|a| a.display_name == steward_sim::generate::CONNECTOR_APP)
        .unwrap();
    app.certificates.push(KeyCredential {
        key_id: Uuid::new_v4(),
        display_name: Some("CN=steward-connector".into()),
        certificate_pem: cert.pem(),
        start: "2024-01-01T00:00:00Z".into(),
        end: "2099-01-01T00:00:00Z".into(),
    });
    let r = emulator_with(t, Settings::default(), false, false).await;
    let token_url = format!("{}/{}/oauth2/v2.0/token", r.ready.login, r.ready.tenant_id);
    let assertion = |key: &rcgen::KeyPair, der: &[u8]| {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        h.x5t = Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha1::Sha1::digest(der)));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = json!({"aud": token_url, "iss": r.ready.client_id, "sub": r.ready.client_id, "jti": Uuid::new_v4(), "nbf": now, "exp": now + 600});
        let ek = jsonwebtoken::EncodingKey::from_rsa_pem(key.serialize_pem().as_bytes()).unwrap();
        jsonwebtoken::encode(&h, &claims, &ek).unwrap()
    };
    let post = |a: String| {
        let url = token_url.clone();
        let cid = r.ready.client_id.clone();
        async move {
            http()
                .post(url)
                .form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", cid.as_str()),
                    (
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    ),
                    ("client_assertion", a.as_str()),
                    ("scope", GRAPH),
                ])
                .send()
                .await
                .unwrap()
        }
    };
    let resp = post(assertion(&key, cert.der())).await;
    assert_eq!(resp.status(), 200);
    let tok = resp.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let claims: Value = jsonwebtoken::dangerous::insecure_decode_claims(&tok).unwrap();
    assert_eq!(claims["appidacr"], "2");
    // Another key with the registered thumbprint fails the signature check; an unknown cert is unknown.
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let resp = post(assertion(&other, cert.der())).await;
    assert_eq!(resp.status(), 401);
    let resp = post(assertion(&other, b"unregistered")).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.json::<Value>().await.unwrap()["error_codes"][0], 700027);
}

#[tokio::test]
async fn authorization_code_flow_for_delegated_setups() {
    let r = emulator("tiny").await;
    let redirect = "http://localhost:9999/callback";
    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = no_redirect
        .get(format!(
            "{}/{}/oauth2/v2.0/authorize",
            r.ready.login, r.ready.tenant_id
        ))
        .query(&[
            ("client_id", r.ready.client_id.as_str()),
            ("response_type", "code"),
            ("redirect_uri", redirect),
            ("scope", "offline_access User.Read.All"),
            ("state", "xyz"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    let loc = url::Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap();
    let q: BTreeMap<String, String> = loc.query_pairs().into_owned().collect();
    assert_eq!(q["state"], "xyz");
    let form = [
        ("grant_type", "authorization_code"),
        ("client_id", r.ready.client_id.as_str()),
        ("client_secret", r.ready.client_secret.as_str()),
        ("code", q["code"].as_str()),
        ("redirect_uri", redirect),
    ];
    let v: Value = http()
        .post(format!(
            "{}/{}/oauth2/v2.0/token",
            r.ready.login, r.ready.tenant_id
        ))
        .form(&form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let access = v["access_token"].as_str().unwrap();
    let refresh = v["refresh_token"].as_str().unwrap();
    assert_eq!(get(&r, access, "/v1.0/users?$top=1").await.0, 200);
    // The code is single-use; the refresh token mints a new access token.
    let v2: Value = http()
        .post(format!(
            "{}/{}/oauth2/v2.0/token",
            r.ready.login, r.ready.tenant_id
        ))
        .form(&form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v2["error"], "invalid_grant");
    let v3: Value = http()
        .post(format!(
            "{}/{}/oauth2/v2.0/token",
            r.ready.login, r.ready.tenant_id
        ))
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", r.ready.client_id.as_str()),
            ("client_secret", r.ready.client_secret.as_str()),
            ("refresh_token", refresh),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(v3["access_token"].is_string());
}

/// Property names of entity and complex types in Graph's CSDL (namespace microsoft.graph), with base
/// types' properties included, and each property's type.
fn csdl() -> BTreeMap<String, BTreeMap<String, String>> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures/msgraph/v1.0-Prod.csdl"
    );
    let text =
        std::fs::read_to_string(path).expect("shared/fixtures/msgraph/v1.0-Prod.csdl beside the checkout");
    let attr = |line: &str, name: &str| -> Option<String> {
        let key = format!("{name}=\"");
        let start = line.find(&key)? + key.len();
        Some(line[start..start + line[start..].find('"')?].to_string())
    };
    let mut types: BTreeMap<String, (Option<String>, BTreeMap<String, String>)> = BTreeMap::new();
    let mut in_graph = false;
    let mut current: Option<String> = None;
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with("<Schema ") {
            in_graph = attr(l, "Namespace").as_deref() == Some("microsoft.graph");
        }
        if !in_graph {
            continue;
        }
        if l.starts_with("<EntityType ") || l.starts_with("<ComplexType ") {
            let name = attr(l, "Name").unwrap();
            let base = attr(l, "BaseType").map(|b| b.trim_start_matches("graph.").to_string());
            types.insert(name.clone(), (base, BTreeMap::new()));
            current = if l.ends_with("/>") { None } else { Some(name) };
        } else if l.starts_with("</EntityType") || l.starts_with("</ComplexType") {
            current = None;
        } else if (l.starts_with("<Property ") || l.starts_with("<NavigationProperty "))
            && let Some(c) = &current
        {
            let ty = attr(l, "Type").unwrap_or_default();
            types.get_mut(c).unwrap().1.insert(attr(l, "Name").unwrap(), ty);
        }
    }
    let mut out = BTreeMap::new();
    for name in types.keys() {
        let mut props = BTreeMap::new();
        let mut cur = Some(name.clone());
        while let Some(c) = cur {
            let Some((base, p)) = types.get(&c) else { break };
            props.extend(p.clone());
            cur = base.clone();
        }
        out.insert(name.clone(), props);
    }
    out
}

/// Every key of `obj` is a property of `ty`; nested objects are checked against their complex types.
fn conforms(
    schema: &BTreeMap<String, BTreeMap<String, String>>,
    ty: &str,
    obj: &Value,
    path: &str,
    errors: &mut Vec<String>,
) {
    let Some(props) = schema.get(ty) else {
        errors.push(format!("{path}: type {ty} not in the CSDL"));
        return;
    };
    for (k, v) in obj.as_object().unwrap() {
        if k.starts_with('@') || k.contains("@odata") || k.ends_with("@delta") {
            continue;
        }
        let Some(pty) = props.get(k) else {
            errors.push(format!("{path}.{k}: not a property of microsoft.graph.{ty}"));
            continue;
        };
        let inner = pty.trim_start_matches("Collection(").trim_end_matches(')');
        if let Some(complex) = inner.strip_prefix("graph.") {
            match v {
                Value::Object(_) => conforms(schema, complex, v, &format!("{path}.{k}"), errors),
                Value::Array(items) => {
                    for it in items.iter().filter(|i| i.is_object()) {
                        let t = it
                            .get("@odata.type")
                            .and_then(Value::as_str)
                            .map(|s| s.trim_start_matches("#microsoft.graph."))
                            .unwrap_or(complex);
                        conforms(schema, t, it, &format!("{path}.{k}[]"), errors);
                    }
                }
                _ => {}
            }
        }
    }
}

#[tokio::test]
async fn conformance_with_graphs_published_schema() {
    let schema = csdl();
    assert!(
        schema["user"].contains_key("userPrincipalName"),
        "the CSDL parser works"
    );
    let r = emulator("small").await;
    let tok = token(&r, GRAPH).await;
    let u = r
        .sim
        .read()
        .tenant
        .users
        .iter()
        .find(|u| !u.licenses.is_empty())
        .unwrap()
        .id;
    let all_user_props = "id,accountEnabled,assignedLicenses,businessPhones,city,companyName,createdDateTime,creationType,department,displayName,employeeId,employeeType,externalUserState,givenName,jobTitle,mail,mailNickname,mobilePhone,officeLocation,onPremisesImmutableId,onPremisesSyncEnabled,onPremisesSamAccountName,preferredLanguage,surname,usageLocation,userPrincipalName,userType,signInActivity";
    let sp = r
        .sim
        .read()
        .tenant
        .service_principals
        .iter()
        .find(|s| !s.app_roles.is_empty())
        .unwrap()
        .id;
    let checks: Vec<(&str, String)> = vec![
        ("user", format!("/v1.0/users?$top=50&$select={all_user_props}")),
        ("group", "/v1.0/groups?$top=100".into()),
        ("servicePrincipal", "/v1.0/servicePrincipals?$top=100".into()),
        ("application", "/v1.0/applications?$top=100".into()),
        (
            "appRoleAssignment",
            format!("/v1.0/servicePrincipals/{sp}/appRoleAssignedTo"),
        ),
        (
            "unifiedRoleDefinition",
            "/v1.0/roleManagement/directory/roleDefinitions".into(),
        ),
        (
            "unifiedRoleAssignment",
            "/v1.0/roleManagement/directory/roleAssignments".into(),
        ),
        (
            "unifiedRoleEligibilitySchedule",
            "/v1.0/roleManagement/directory/roleEligibilitySchedules".into(),
        ),
        (
            "unifiedRoleEligibilityScheduleInstance",
            "/v1.0/roleManagement/directory/roleEligibilityScheduleInstances".into(),
        ),
        ("subscribedSku", "/v1.0/subscribedSkus".into()),
        ("licenseDetails", format!("/v1.0/users/{u}/licenseDetails")),
        ("organization", "/v1.0/organization".into()),
        ("directoryRole", "/v1.0/directoryRoles".into()),
        ("domain", "/v1.0/domains".into()),
    ];
    let mut errors = Vec::new();
    for (ty, path) in checks {
        let (s, v) = get(&r, &tok, &path).await;
        assert_eq!(s, 200, "{path}: {v}");
        let items = v["value"].as_array().unwrap();
        assert!(!items.is_empty(), "{path} returned nothing to check");
        for it in items {
            conforms(&schema, ty, it, ty, &mut errors);
        }
    }
    let (_, v) = get(&r, &tok, &format!("/v1.0/users/{u}/mailboxSettings")).await;
    conforms(&schema, "mailboxSettings", &v, "mailboxSettings", &mut errors);
    let g = r.sim.read().tenant.groups[0].id;
    for m in all_pages(
        &tok,
        &format!("{}/v1.0/groups/{g}/members?$top=50", r.ready.graph),
    )
    .await
    .iter()
    .take(50)
    {
        let ty = m["@odata.type"]
            .as_str()
            .unwrap()
            .trim_start_matches("#microsoft.graph.");
        conforms(&schema, ty, m, "member", &mut errors);
    }
    errors.sort();
    errors.dedup();
    assert!(
        errors.is_empty(),
        "properties not in Graph's schema:\n{}",
        errors.join("\n")
    );
}

/// The keys an ARM example response has on its items (recursively for `properties`).
fn fixture_keys(file: &str, status: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let path = format!(
        "{}/../../../shared/fixtures/arm/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let body = &v["responses"][status]["body"];
    let item = body.get("value").and_then(|x| x.get(0)).unwrap_or(body);
    let top = item.as_object().unwrap().keys().cloned().collect();
    let props = item
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();
    (top, props)
}

#[tokio::test]
async fn arm_responses_have_the_shape_of_azures_examples() {
    let r = emulator("small").await;
    let tok = token(&r, ARM).await;
    let (sub, rg, acct, id_sub) = {
        let st = r.sim.read();
        let a = st.tenant.azure.storage_accounts[0].clone();
        (
            a.subscription_id,
            a.resource_group.clone(),
            a.name.clone(),
            st.tenant.azure.identities[0].subscription_id,
        )
    };
    let cases = [
        (
            "GetSubscriptions.json",
            "/subscriptions?api-version=2022-12-01".to_string(),
            &["tags", "managedByTenants", "subscriptionPolicies"][..],
        ),
        (
            "GetTenants.json",
            "/tenants?api-version=2022-12-01".into(),
            &["tenantBrandingLogoUrl"][..],
        ),
        (
            "ResourceGroups_Get.json",
            format!("/subscriptions/{sub}/resourceGroups/{rg}?api-version=2021-04-01"),
            &[][..],
        ),
        (
            "RoleAssignments_ListForSubscription.json",
            format!(
                "/subscriptions/{sub}/providers/Microsoft.Authorization/roleAssignments?api-version=2022-04-01"
            ),
            &[][..],
        ),
        (
            "RoleAssignments_ListForScope.json",
            format!(
                "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Authorization/roleAssignments?api-version=2022-04-01"
            ),
            &[][..],
        ),
        (
            "GetRoleDefinitionAtScope.json",
            format!(
                "/subscriptions/{sub}/providers/Microsoft.Authorization/roleDefinitions?api-version=2022-04-01"
            ),
            &[][..],
        ),
        (
            "StorageAccountList.json",
            format!(
                "/subscriptions/{sub}/providers/Microsoft.Storage/storageAccounts?api-version=2023-05-01"
            ),
            &["sku", "tags", "identity", "extendedLocation"][..],
        ),
        (
            "BlobContainersList.json",
            format!(
                "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Storage/storageAccounts/{acct}/blobServices/default/containers?api-version=2023-05-01"
            ),
            &[][..],
        ),
        (
            "IdentityListBySubscription.json",
            format!(
                "/subscriptions/{id_sub}/providers/Microsoft.ManagedIdentity/userAssignedIdentities?api-version=2024-11-30"
            ),
            &[][..],
        ),
    ];
    for (file, path, optional) in cases {
        let (s, v) = get_url(&tok, &format!("{}{path}", r.ready.arm)).await;
        assert_eq!(s, 200, "{path}: {v}");
        let item = v
            .get("value")
            .and_then(|x| x.get(0))
            .cloned()
            .unwrap_or(v.clone());
        assert!(item.is_object(), "{path} returned no item to compare: {v}");
        let (top, props) = fixture_keys(file, "200");
        let ours: BTreeSet<String> = item.as_object().unwrap().keys().cloned().collect();
        let missing: Vec<_> = top
            .iter()
            .filter(|k| !ours.contains(*k) && !optional.contains(&k.as_str()))
            .collect();
        assert!(missing.is_empty(), "{file}: our items lack {missing:?}");
        if let Some(p) = item.get("properties").and_then(Value::as_object) {
            let want: Vec<&String> = props
                .iter()
                .filter(|k| {
                    matches!(
                        k.as_str(),
                        "roleDefinitionId"
                            | "principalId"
                            | "principalType"
                            | "scope"
                            | "roleName"
                            | "type"
                            | "assignableScopes"
                            | "permissions"
                            | "clientId"
                            | "tenantId"
                            | "provisioningState"
                            | "creationTime"
                            | "publicAccess"
                    )
                })
                .collect();
            let lacking: Vec<_> = want.iter().filter(|k| !p.contains_key(k.as_str())).collect();
            assert!(lacking.is_empty(), "{file}: our properties lack {lacking:?}");
        }
    }
}

#[tokio::test]
async fn delta_latest_owners_deletes_and_the_audit_log() {
    let r = emulator("small").await;
    let tok = token(&r, "https://graph.microsoft.com/.default").await;
    let g = &r.ready.graph;
    let before = time::OffsetDateTime::now_utc() - time::Duration::minutes(1);
    // `$deltatoken=latest`: no objects, a link at the current position.
    let latest = |what: &str| {
        format!("{g}/v1.0/{what}/delta?$select=id,displayName,members,owners&$deltatoken=latest")
    };
    let (s, v) = get_url(&tok, &latest("users")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["value"], json!([]));
    let users_link = v["@odata.deltaLink"].as_str().unwrap().to_owned();
    let (_, v) = get_url(&tok, &latest("groups")).await;
    let groups_link = v["@odata.deltaLink"].as_str().unwrap().to_owned();

    let (manager, report, group, gone_group, sp, outsider) = {
        let st = r.sim.read();
        let t = &st.tenant;
        let report = t.users.iter().find(|u| u.manager.is_some()).unwrap();
        let manager = report.manager.unwrap();
        let writable = |x: &&Group| x.membership_rule.is_none() && !x.on_premises_sync_enabled;
        let group = t
            .groups
            .iter()
            .filter(writable)
            .find(|x| !x.members.contains(&manager))
            .unwrap();
        let gone = t
            .groups
            .iter()
            .filter(writable)
            .find(|x| x.id != group.id)
            .unwrap();
        let outsider = t
            .users
            .iter()
            .find(|u| !group.owners.contains(&u.id) && u.id != manager)
            .unwrap();
        let sp = t
            .service_principals
            .iter()
            .find(|s| s.kind == SpKind::Application)
            .unwrap();
        (manager, report.id, group.id, gone.id, sp.id, outsider.id)
    };
    let member_of: Vec<Uuid> = r
        .sim
        .read()
        .tenant
        .groups
        .iter()
        .filter(|x| x.members.contains(&manager))
        .map(|x| x.id)
        .collect();
    // Creating and deleting users needs User.ReadWrite.All, which the connector's app does not hold.
    let body = json!({"accountEnabled": true, "displayName": "New", "mailNickname": "new",
        "userPrincipalName": "new@x.example", "passwordProfile": {"password": "x"}});
    let (s, v) = send(&r, &tok, reqwest::Method::POST, "/v1.0/users", Some(body)).await;
    assert_eq!(s, 403, "{v}");
    let (s, _) = send(
        &r,
        &tok,
        reqwest::Method::DELETE,
        &format!("/v1.0/users/{manager}"),
        None,
    )
    .await;
    assert_eq!(s, 403);
    r.sim.write().delete_user(manager).unwrap();
    let (s, _) = send(
        &r,
        &tok,
        reqwest::Method::GET,
        &format!("/v1.0/users/{manager}"),
        None,
    )
    .await;
    assert_eq!(s, 404);
    let owner = json!({"@odata.id": format!("https://graph.microsoft.com/v1.0/directoryObjects/{outsider}")});
    let (s, v) = send(
        &r,
        &tok,
        reqwest::Method::POST,
        &format!("/v1.0/groups/{group}/owners/$ref"),
        Some(owner),
    )
    .await;
    assert_eq!(s, 204, "{v}");
    let (s, v) = send(
        &r,
        &tok,
        reqwest::Method::DELETE,
        &format!("/v1.0/groups/{gone_group}"),
        None,
    )
    .await;
    assert_eq!(s, 204, "{v}");
    let (s, _) = send(
        &r,
        &tok,
        reqwest::Method::DELETE,
        &format!("/v1.0/groups/{gone_group}"),
        None,
    )
    .await;
    assert_eq!(s, 404);
    let body = json!({"principalId": outsider, "resourceId": sp, "appRoleId": Uuid::nil()});
    let (s, v) = send(
        &r,
        &tok,
        reqwest::Method::POST,
        &format!("/v1.0/servicePrincipals/{sp}/appRoleAssignedTo"),
        Some(body),
    )
    .await;
    assert_eq!(s, 201, "{v}");

    // Users: the deleted manager (soft-deleted: reason "changed") and its report, who lost its manager.
    let (s, v) = get_url(&tok, &users_link).await;
    assert_eq!(s, 200, "{v}");
    let items = v["value"].as_array().unwrap();
    let find = |id: Uuid| items.iter().find(|x| x["id"] == json!(id)).cloned();
    assert_eq!(find(manager).unwrap()["@removed"]["reason"], "changed");
    assert!(find(report).unwrap().get("@removed").is_none());
    assert!(v["@odata.deltaLink"].is_string());
    // Groups: the new owner, the deleted group, and the manager's groups losing it as a member.
    let (_, v) = get_url(&tok, &groups_link).await;
    let items = v["value"].as_array().unwrap();
    let find = |id: Uuid| items.iter().find(|x| x["id"] == json!(id)).cloned();
    let owners = find(group).unwrap()["owners@delta"].as_array().unwrap().clone();
    assert!(
        owners
            .iter()
            .any(|o| o["id"] == json!(outsider) && o.get("@removed").is_none()),
        "{owners:?}"
    );
    assert_eq!(find(gone_group).unwrap()["@removed"]["reason"], "changed");
    for m in member_of.iter().filter(|x| **x != gone_group) {
        let md = find(*m).unwrap()["members@delta"].as_array().unwrap().clone();
        assert!(
            md.iter()
                .any(|x| x["id"] == json!(manager) && x["@removed"].is_object()),
            "{md:?}"
        );
    }
    // The audit log names the service principal whose assignments changed.
    let since = before
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let audits = all_pages(
        &tok,
        &format!("{g}/v1.0/auditLogs/directoryAudits?$filter=activityDateTime ge {since}"),
    )
    .await;
    assert!(
        audits.iter().any(|a| a["targetResources"][0]["id"] == json!(sp)
            && a["targetResources"][0]["type"] == "ServicePrincipal"),
        "{audits:?}"
    );
    let later = (time::OffsetDateTime::now_utc() + time::Duration::hours(1))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let none = all_pages(
        &tok,
        &format!("{g}/v1.0/auditLogs/directoryAudits?$filter=activityDateTime ge {later}"),
    )
    .await;
    assert!(none.is_empty());
    // Expired links answer 410 syncStateNotFound.
    r.sim.write().expire_delta_tokens();
    let (s, v) = get_url(&tok, &users_link).await;
    assert_eq!(s, 410);
    assert_eq!(v["error"]["code"], "syncStateNotFound");
}
