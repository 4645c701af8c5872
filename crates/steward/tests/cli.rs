//! The `steward` binary as users run it: the emulator's ready line and CLI contract.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// A `steward sim serve` child process, killed on drop.
struct Serve {
    child: Child,
    ready: Value,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn steward() -> Command {
    Command::new(env!("CARGO_BIN_EXE_steward"))
}

fn serve(args: &[&str]) -> Serve {
    let mut child = steward()
        .args(["sim", "serve"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the emulator printed no ready line");
    let ready: Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("ready line is not JSON ({e}): {line}"));
    Serve { child, ready }
}

async fn token(ready: &Value, secret: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!(
            "{}/{}/oauth2/v2.0/token",
            ready["login"].as_str().unwrap(),
            ready["tenant_id"].as_str().unwrap()
        ))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", ready["client_id"].as_str().unwrap()),
            ("client_secret", secret),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn sim_serve_prints_one_ready_line_and_pages_match_the_manifest() {
    let s = serve(&["--tenant", "medium", "--seed", "7"]);
    for key in ["login", "graph", "arm", "tenant_id", "client_id", "client_secret"] {
        assert!(
            s.ready[key].as_str().is_some_and(|v| !v.is_empty()),
            "ready line lacks {key}: {}",
            s.ready
        );
    }
    assert!(s.ready["ca_file"].is_null());
    let manifest = steward()
        .args(["sim", "manifest", "--tenant", "medium", "--seed", "7"])
        .output()
        .unwrap();
    assert!(manifest.status.success());
    let manifest: Value = serde_json::from_slice(&manifest.stdout).unwrap();
    assert_eq!(manifest["tenant_id"], s.ready["tenant_id"]);
    let tok: Value = token(&s.ready, s.ready["client_secret"].as_str().unwrap())
        .await
        .json()
        .await
        .unwrap();
    let tok = tok["access_token"].as_str().unwrap().to_string();
    let mut url = format!(
        "{}/v1.0/users?$top=999&$select=id",
        s.ready["graph"].as_str().unwrap()
    );
    let mut n = 0;
    loop {
        let page: Value = reqwest::Client::new()
            .get(&url)
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        n += page["value"].as_array().unwrap().len();
        match page["@odata.nextLink"].as_str() {
            Some(next) => url = next.to_string(),
            None => break,
        }
    }
    assert_eq!(n as u64, manifest["users"].as_u64().unwrap());
    assert_eq!(n, 10_000);
    // A wrong secret: 401 invalid_client with AADSTS7000215.
    let resp = token(&s.ready, "not-the-secret").await;
    assert_eq!(resp.status(), 401);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"], "invalid_client");
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .starts_with("AADSTS7000215")
    );
}

#[tokio::test]
async fn sim_serve_with_microsoft_throttling_answers_a_burst_with_429() {
    let s = serve(&["--tenant", "tiny", "--throttle", "microsoft", "--tls"]);
    let ca = std::fs::read(s.ready["ca_file"].as_str().expect("--tls writes a CA")).unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
        .build()
        .unwrap();
    let tok: Value = client
        .post(format!(
            "{}/{}/oauth2/v2.0/token",
            s.ready["login"].as_str().unwrap(),
            s.ready["tenant_id"].as_str().unwrap()
        ))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", s.ready["client_id"].as_str().unwrap()),
            ("client_secret", s.ready["client_secret"].as_str().unwrap()),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tok = tok["access_token"].as_str().unwrap().to_string();
    let url = format!("{}/v1.0/subscribedSkus", s.ready["graph"].as_str().unwrap());
    // 3 RU each against a 3,500 RU bucket: 64 concurrent requests at a time until one is refused. Each
    // burst is awaited whole, bodies read: requests abandoned mid-flight would reset their HTTP/2
    // streams, and a server closes a connection that resets too many (hyper's guard against rapid
    // reset), which failed the request after the loop now and then.
    let mut retry_after = None;
    for _ in 0..100 {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..64 {
            let (c, u, t) = (client.clone(), url.clone(), tok.clone());
            set.spawn(async move {
                let r = c.get(u).bearer_auth(t).send().await.unwrap();
                let status = r.status();
                let after = r
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_owned());
                r.bytes().await.unwrap();
                (status, after)
            });
        }
        while let Some(r) = set.join_next().await {
            let (status, after) = r.unwrap();
            if status == 429 && retry_after.is_none() {
                retry_after = Some(after.expect("a 429 says when to retry"));
            }
        }
        if retry_after.is_some() {
            break;
        }
    }
    let after = retry_after.expect("a burst is throttled");
    assert!(after.parse::<u64>().unwrap() >= 1);
    let stats: Value = client
        .get(format!("{}/_sim/stats", s.ready["graph"].as_str().unwrap()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(stats["throttled"].as_u64().unwrap() >= 1);
    assert!(stats["resource_units"].as_u64().unwrap() >= 3_500);
}

#[test]
fn bad_options_fail_with_a_clear_message() {
    for (args, needle) in [
        (vec!["sim", "serve", "--faults", "lots"], "not a number"),
        (vec!["sim", "serve", "--throttle", "maybe"], "--throttle maybe"),
        (
            vec!["sim", "serve", "--tenant", "/nonexistent/tenant.json"],
            "not a size",
        ),
        (vec!["sim", "manifest", "--tenant", "huge"], "not a size"),
    ] {
        let out = steward().args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?} printed to stdout");
    }
}

#[test]
fn export_round_trips_through_serve_and_bad_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.json");
    let out = steward()
        .args(["sim", "export", "--tenant", "tiny", "--seed", "3", "-o"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let from_file = steward()
        .args(["sim", "manifest", "--tenant"])
        .arg(&path)
        .output()
        .unwrap();
    let generated = steward()
        .args(["sim", "manifest", "--tenant", "tiny", "--seed", "3"])
        .output()
        .unwrap();
    assert_eq!(from_file.stdout, generated.stdout);
    // A dangling reference is reported with its path.
    let mut t: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    t["groups"][0]["members"]
        .as_array_mut()
        .unwrap()
        .push(Value::String(uuid::Uuid::new_v4().to_string()));
    std::fs::write(&path, serde_json::to_vec(&t).unwrap()).unwrap();
    let out = steward()
        .args(["sim", "manifest", "--tenant"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("groups[") && err.contains("members"), "{err}");
}

/// `steward audit verify` reads the database itself: an intact log passes, an edited or truncated one
/// fails with the entry named.
#[test]
fn audit_verify_catches_edits_and_deletions() {
    use std::sync::Arc;
    use steward_platform::{OpenOptions, Platform, SystemClock};
    let d = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let opts = OpenOptions {
        db_url: None,
        data_dir: Some(d.path().to_owned()),
    };
    rt.block_on(async {
        let p = Platform::open(&opts, Arc::new(SystemClock)).await.unwrap();
        let t = p.bootstrap().await.unwrap().unwrap();
        let a = p.authenticate(&t.token).await.unwrap();
        for name in ["auto", "auto2", "auto3"] {
            let spec = serde_json::from_value(
                serde_json::json!({"name": name, "steps": [{"kind": "auto_approve"}]}),
            )
            .unwrap();
            p.create_policy(&a, spec).await.unwrap();
        }
    });
    let verify = || {
        steward()
            .args(["audit", "verify", "--data-dir"])
            .arg(d.path())
            .output()
            .unwrap()
    };
    let out = verify();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("3 entries"), "{stdout}");
    let db = format!("sqlite://{}", d.path().join("steward.db").display());
    let exec = |sql: &'static str| {
        rt.block_on(async {
            use sqlx::Executor;
            let p = sqlx::SqlitePool::connect(&db).await.unwrap();
            p.execute(sql).await.unwrap();
            p.close().await;
        })
    };
    exec("DELETE FROM audit_log WHERE seq = 3");
    let out = verify();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("recorded head"), "{stderr}");
    exec("UPDATE audit_log SET actor = 'mallory' WHERE seq = 1");
    let out = verify();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("entry 1 was edited"), "{stderr}");
}

/// `steward demo --no-wait` (what the README's first command runs, without waiting for Ctrl-C): the emulator
/// and the platform start, the Entra connector syncs, the "auto" policy exists, and it says what to try.
#[test]
fn demo_no_wait_syncs_and_prints_what_to_try() {
    let d = tempfile::tempdir().unwrap();
    let out = steward()
        .args(["demo", "--no-wait", "--data-dir"])
        .arg(d.path().join("platform"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("STEWARD_TOKEN=stw_"), "{stdout}");
    assert!(stdout.contains("synced"), "{stdout}");
    assert!(stdout.contains("steward request create"), "{stdout}");
    // The database it leaves behind verifies: the connector and the policy are in the audit log.
    let v = steward()
        .args(["audit", "verify", "--data-dir"])
        .arg(d.path().join("platform"))
        .output()
        .unwrap();
    let vs = String::from_utf8_lossy(&v.stdout);
    assert!(v.status.success() && vs.contains("2 entries"), "{vs}");
}

/// Issue 5's "done when", through the real binary: sync, grant a group membership one-shot, see it through
/// Graph and in `steward inspect` (the partial sync overlays the full one), revoke it, see it gone.
#[tokio::test]
async fn entra_one_shot_grant_and_revoke_through_the_binary() {
    let s = serve(&["--tenant", "tiny", "--seed", "21"]);
    let r = &s.ready;
    let graph = r["graph"].as_str().unwrap();
    let tok: Value = token(r, r["client_secret"].as_str().unwrap())
        .await
        .json()
        .await
        .unwrap();
    let tok = tok["access_token"].as_str().unwrap().to_owned();
    let get = |path: String| {
        let tok = tok.clone();
        async move {
            reqwest::Client::new()
                .get(path)
                .bearer_auth(tok)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let groups = get(format!(
        "{graph}/v1.0/groups?$select=id,groupTypes,onPremisesSyncEnabled"
    ))
    .await;
    let group = groups["value"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| {
            g["onPremisesSyncEnabled"] != true
                && !g["groupTypes"]
                    .as_array()
                    .is_some_and(|t| t.iter().any(|x| x == "DynamicMembership"))
        })
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let members_of = |g: String| async move {
        get(format!("{graph}/v1.0/groups/{g}/members?$select=id")).await["value"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let before = members_of(group.clone()).await;
    let users = get(format!("{graph}/v1.0/users?$select=id")).await;
    let user = users["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap().to_owned())
        .find(|u| !before.contains(u))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sync.c1z");
    let entra = |extra: &[&str]| {
        steward()
            .arg("entra")
            .arg("-f")
            .arg(&file)
            .args([
                "--entra-tenant-id",
                r["tenant_id"].as_str().unwrap(),
                "--entra-client-id",
                r["client_id"].as_str().unwrap(),
                "--entra-client-secret",
                r["client_secret"].as_str().unwrap(),
                "--login-endpoint",
                r["login"].as_str().unwrap(),
                "--graph-endpoint",
                graph,
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = entra(&[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ent = format!("group:{group}:member");
    let grant_id = format!("{ent}:user:{user}");
    let inspect_has = || {
        let out = steward()
            .args(["inspect", "grants", "--json", "-e", &ent, "-f"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).contains(&grant_id)
    };
    assert!(!inspect_has());
    let out = entra(&[
        "--provisioning",
        "--grant-entitlement",
        &ent,
        "--grant-principal",
        &user,
        "--grant-principal-type",
        "user",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        members_of(group.clone()).await.contains(&user),
        "Graph shows the new member"
    );
    assert!(inspect_has(), "steward inspect shows the grant");
    let out = entra(&["--provisioning", "--revoke-grant", &grant_id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        !members_of(group.clone()).await.contains(&user),
        "Graph no longer shows it"
    );
    assert!(!inspect_has(), "steward inspect no longer shows it");
}
