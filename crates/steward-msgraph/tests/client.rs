//! The client against the emulator over real HTTP(S): auth with secret and certificate, clear failures,
//! paging, `$batch` under throttling, faults, token expiry and the extra CA file.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use steward_msgraph::*;
use steward_sim::ctx::Settings;
use steward_sim::model::*;
use steward_sim::{Options, Running, Size, generate, start};

const NO_PERMS_SECRET: &str = "nop8Q~no-permissions-at-all-secret-000000";
const NO_PERMS_APP: &str = "00000000-0000-0000-0000-000000001234";

fn tenant(size: &str) -> Tenant {
    let mut t = generate(Size::named(size).unwrap(), 11);
    t.applications.push(Application {
        id: uuid::Uuid::from_u128(0x1235),
        app_id: uuid::Uuid::from_u128(0x1234),
        display_name: "No Permissions".into(),
        created: "2024-01-01T00:00:00Z".into(),
        sign_in_audience: None,
        secrets: vec![PasswordCredential {
            key_id: uuid::Uuid::from_u128(0x1236),
            display_name: None,
            secret: NO_PERMS_SECRET.into(),
            start: "2024-01-01T00:00:00Z".into(),
            end: "2099-01-01T00:00:00Z".into(),
        }],
        certificates: vec![],
        owners: vec![],
    });
    t.service_principals.push(ServicePrincipal {
        id: uuid::Uuid::from_u128(0x1237),
        app_id: uuid::Uuid::from_u128(0x1234),
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

async fn sim(t: Tenant, settings: Settings, tls: bool) -> (Running, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let r = start(Options {
        tenant: t,
        settings,
        listen: "127.0.0.1:0".parse().unwrap(),
        tls,
        proxy: None,
        state_dir: dir.path().to_owned(),
    })
    .await
    .unwrap();
    (r, dir)
}

fn config(r: &Running, client_id: &str, cred: Credential) -> Config {
    let ep = Endpoints::new(
        "graph.microsoft.com",
        Some(&r.ready.login),
        Some(&r.ready.graph),
        Some(&r.ready.arm),
    )
    .unwrap();
    let mut c = Config::new(ep, &r.ready.tenant_id, client_id, cred);
    c.ca_file = r.ready.ca_file.as_ref().map(Into::into);
    c.retry.transient_attempts = 12;
    c
}

fn secret(s: &str) -> Credential {
    Credential::Secret(Secret::new(s))
}

#[tokio::test]
async fn pages_follow_next_links_over_tls_with_the_extra_ca() {
    let (r, _d) = sim(tenant("small"), Settings::default(), true).await;
    assert!(r.ready.graph.starts_with("https://"));
    let users_true = r.sim.read().tenant.users.len();
    let ms = Microsoft::new(config(&r, &r.ready.client_id, secret(&r.ready.client_secret))).unwrap();
    let g = ms.graph();
    let users = g.get_all("/v1.0/users?$select=id&$top=7", false).await.unwrap();
    assert_eq!(users.len(), users_true);
    assert_eq!(g.stats().requests as usize, users_true.div_ceil(7));
    assert!(g.stats().resource_units > 0);
    let n = g.get_json("/v1.0/users/$count", true).await.unwrap();
    assert_eq!(n.as_f64().unwrap() as usize, users_true);
    assert_eq!(ms.tokens().fetched(), 1, "one token, cached");
}

#[tokio::test]
async fn failures_name_the_problem() {
    let (r, _d) = sim(tenant("tiny"), Settings::default(), false).await;
    let g = |id: &str, s: &str| Microsoft::new(config(&r, id, secret(s))).unwrap().graph();
    let e = g(&r.ready.client_id, "wrong")
        .get_json("/v1.0/users", false)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidClient { code: 7000215, .. }), "{e}");
    assert!(e.to_string().contains("secret is wrong"), "{e}");
    let e = g("3f1e0000-0000-4000-8000-00000000abcd", "x")
        .get_json("/v1.0/users", false)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::UnknownApplication { .. }), "{e}");
    let e = g(NO_PERMS_APP, NO_PERMS_SECRET)
        .get_json("/v1.0/groups/00000000-0000-0000-0000-000000000001/members", false)
        .await
        .unwrap_err();
    match &e {
        Error::MissingPermission { permission, .. } => assert_eq!(permission, "GroupMember.Read.All"),
        other => panic!("{other}"),
    }
    assert!(e.to_string().contains("admin consent"));
    let mut c = config(&r, &r.ready.client_id, secret(&r.ready.client_secret));
    c.tenant = "nowhere.example".into();
    let e = Microsoft::new(c)
        .unwrap()
        .graph()
        .get_json("/v1.0/users", false)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::UnknownTenant { .. }), "{e}");
    assert!(!format!("{e:?}").contains(&r.ready.client_secret));
}

#[tokio::test]
async fn certificate_assertion_authenticates() {
    let mut t = tenant("tiny");
    let (cert_pem, key_pem) = steward_sim::generate::add_connector_certificate(&mut t).unwrap();
    let (r, _d) = sim(t, Settings::default(), false).await;
    let cred = Credential::Certificate {
        certificate_pem: cert_pem,
        private_key_pem: Secret::new(key_pem),
    };
    let g = Microsoft::new(config(&r, &r.ready.client_id, cred))
        .unwrap()
        .graph();
    let v = g.get_json("/v1.0/organization", false).await.unwrap();
    assert_eq!(v["value"][0]["id"], r.ready.tenant_id.as_str());
}

#[tokio::test]
async fn batch_under_throttling_faults_and_token_expiry() {
    let settings = Settings {
        throttle: true,
        faults: Some("0.08:503,reset,truncate".parse().unwrap()),
        token_lifetime: 3,
        ..Settings::default()
    };
    let (r, _d) = sim(tenant("small"), settings, false).await;
    let ids: Vec<String> = r
        .sim
        .read()
        .tenant
        .groups
        .iter()
        .map(|g| g.id.to_string())
        .collect();
    let sizes: Vec<usize> = r
        .sim
        .read()
        .tenant
        .groups
        .iter()
        .map(|g| g.members.len())
        .collect();
    let ms = Microsoft::new(config(&r, &r.ready.client_id, secret(&r.ready.client_secret))).unwrap();
    let g = ms.graph();
    // A tiny budget forces client-side pacing; 3 s tokens force refreshes mid-run.
    g.budget().resize(60.0, 60.0);
    let paths: Vec<String> = ids
        .iter()
        .cycle()
        .take(200)
        .map(|id| format!("/v1.0/groups/{id}/members?$select=id&$top=999"))
        .collect();
    let t = std::time::Instant::now();
    let out = g.batch_get(&paths).await;
    assert_eq!(out.len(), 200);
    for (i, r) in out.into_iter().enumerate() {
        let v = r.unwrap();
        let n = v["value"].as_array().unwrap().len();
        assert_eq!(n, sizes[i % sizes.len()].min(999));
    }
    // 200 × 2 RU at 60 RU/s after a 60 RU burst: at least ~5 s.
    assert!(t.elapsed() >= Duration::from_secs(4), "{:?}", t.elapsed());
    let users = g.get_all("/v1.0/users?$select=id&$top=10", false).await.unwrap();
    assert_eq!(users.len(), r.sim.read().tenant.users.len());
    assert!(ms.tokens().fetched() >= 2, "tokens were refreshed");
}

#[tokio::test]
async fn writes_are_sent_once_and_lost_answers_are_unconfirmed() {
    let t = tenant("tiny");
    let g = t
        .groups
        .iter()
        .find(|g| g.membership_rule.is_none() && !g.on_premises_sync_enabled)
        .unwrap()
        .clone();
    let u = t.users.iter().find(|u| !g.members.contains(&u.id)).unwrap().id;
    let body =
        serde_json::json!({"@odata.id": format!("https://graph.microsoft.com/v1.0/directoryObjects/{u}")});
    let add = format!("/v1.0/groups/{}/members/$ref", g.id);
    let remove = format!("/v1.0/groups/{}/members/{u}/$ref", g.id);
    let members = |r: &Running| {
        r.sim
            .read()
            .tenant
            .groups
            .iter()
            .find(|x| x.id == g.id)
            .unwrap()
            .members
            .iter()
            .filter(|m| **m == u)
            .count()
    };
    // Clean: 204 Done; the duplicate and the absent answers are errors the caller classifies.
    let (r, _d) = sim(t.clone(), Settings::default(), false).await;
    let ms = Microsoft::new(config(
        &r,
        &r.ready.client_id,
        Credential::Secret(Secret::new(r.ready.client_secret.clone())),
    ))
    .unwrap();
    let c = ms.graph();
    assert_eq!(
        c.write(WriteMethod::Post, &add, Some(&body)).await.unwrap(),
        Written::Done(serde_json::Value::Null)
    );
    assert_eq!(members(&r), 1);
    let dup = c.write(WriteMethod::Post, &add, Some(&body)).await.unwrap_err();
    assert!(dup.to_string().contains("already exist"), "{dup}");
    assert_eq!(members(&r), 1);
    assert!(matches!(
        c.write(WriteMethod::Delete, &remove, None).await.unwrap(),
        Written::Done(_)
    ));
    let gone = c.write(WriteMethod::Delete, &remove, None).await.unwrap_err();
    assert!(matches!(gone, Error::NotFound { .. }), "{gone}");
    // Without the permission: its name.
    let reader = Microsoft::new(config(
        &r,
        r.ready.reader_client_id.as_deref().unwrap(),
        Credential::Secret(Secret::new(r.ready.reader_client_secret.clone().unwrap())),
    ))
    .unwrap();
    match reader
        .graph()
        .write(WriteMethod::Post, &add, Some(&body))
        .await
        .unwrap_err()
    {
        Error::MissingPermission { permission, .. } => assert_eq!(permission, "GroupMember.ReadWrite.All"),
        other => panic!("{other}"),
    }
    assert_eq!(members(&r), 0);
    // Every answer lost (connection reset, 503): sent once, reported unconfirmed, never resent.
    for fault in ["1.0:reset", "1.0:503"] {
        let settings = Settings {
            faults: Some(fault.parse().unwrap()),
            ..Settings::default()
        };
        let (r, _d) = sim(t.clone(), settings, false).await;
        let ms = Microsoft::new(config(
            &r,
            &r.ready.client_id,
            Credential::Secret(Secret::new(r.ready.client_secret.clone())),
        ))
        .unwrap();
        let c = ms.graph();
        let w = c.write(WriteMethod::Post, &add, Some(&body)).await.unwrap();
        assert!(matches!(w, Written::Unconfirmed(_)), "{fault}: {w:?}");
        assert_eq!(c.stats().requests, 1, "{fault}: not resent");
        assert_eq!(members(&r), 0, "{fault}: the emulator refused before applying");
    }
}
