//! `steward connectors …`: the platform's connectors from the command line (STEWARD_URL, STEWARD_TOKEN).

use std::path::PathBuf;

use serde_json::{Value, json};

/// Where the server is and who is calling.
#[derive(clap::Args, Debug, Clone)]
pub struct ClientArgs {
    /// The server's URL.
    #[arg(long, env = "STEWARD_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// A bearer token.
    #[arg(long, env = "STEWARD_TOKEN", hide_env_values = true)]
    pub token: String,
}

/// A small blocking-style client over the API.
pub struct Client {
    args: ClientArgs,
    http: reqwest::Client,
}

impl Client {
    pub fn new(args: ClientArgs) -> Self {
        Client {
            args,
            http: reqwest::Client::new(),
        }
    }
    async fn send(&self, rb: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let r = rb.bearer_auth(&self.args.token).send().await?;
        let st = r.status();
        let text = r.text().await?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !st.is_success() {
            let msg = v["error"]["message"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| v.to_string());
            anyhow::bail!("{st}: {msg}");
        }
        Ok(v)
    }
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(
            self.http
                .get(format!("{}{path}", self.args.url.trim_end_matches('/'))),
        )
        .await
    }
    /// GET returning the body as text (exports).
    pub async fn get_text(&self, path: &str) -> anyhow::Result<String> {
        let r = self
            .http
            .get(format!("{}{path}", self.args.url.trim_end_matches('/')))
            .bearer_auth(&self.args.token)
            .send()
            .await?;
        let st = r.status();
        let text = r.text().await?;
        if !st.is_success() {
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
            let msg = v["error"]["message"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| v.to_string());
            anyhow::bail!("{st}: {msg}");
        }
        Ok(text)
    }
    pub async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.send(
            self.http
                .post(format!("{}{path}", self.args.url.trim_end_matches('/')))
                .json(&body),
        )
        .await
    }
    pub async fn post_bytes(&self, path: &str, body: Vec<u8>) -> anyhow::Result<Value> {
        self.send(
            self.http
                .post(format!("{}{path}", self.args.url.trim_end_matches('/')))
                .body(body),
        )
        .await
    }
}

pub fn print(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub fn block_on(f: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

#[derive(clap::Subcommand)]
pub enum ConnectorsCommand {
    /// List connectors.
    List {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        q: Option<String>,
    },
    /// One connector.
    Get {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
    },
    /// Register a connector. Settings are the connector's flag names in snake_case; secret ones are write-only.
    Create {
        #[command(flatten)]
        client: ClientArgs,
        /// entra, azure or baton.
        #[arg(long)]
        kind: String,
        #[arg(long)]
        name: String,
        /// KEY=VALUE (repeat).
        #[arg(long = "setting", value_name = "KEY=VALUE")]
        settings: Vec<String>,
        /// Owners (UPN or identity id; repeat).
        #[arg(long = "owner")]
        owners: Vec<String>,
        /// Mark as the identity source.
        #[arg(long)]
        identity_source: Option<bool>,
        /// Sync every N seconds.
        #[arg(long)]
        sync_interval_secs: Option<i64>,
    },
    /// Run a sync now (Entra); --wait polls until it ends.
    Sync {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
        #[arg(long)]
        wait: bool,
    },
    /// Upload a Baton .c1z as the connector's new snapshot.
    Upload {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
        file: PathBuf,
    },
    /// Sync history.
    Syncs {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
    },
}

pub fn run(c: ConnectorsCommand) -> anyhow::Result<()> {
    block_on(async move {
        match c {
            ConnectorsCommand::List { client, q } => {
                let q = q.map(|q| format!("?q={q}")).unwrap_or_default();
                print(&Client::new(client).get(&format!("/api/v1/connectors{q}")).await?)
            }
            ConnectorsCommand::Get { client, id } => print(
                &Client::new(client)
                    .get(&format!("/api/v1/connectors/{id}"))
                    .await?,
            ),
            ConnectorsCommand::Create {
                client,
                kind,
                name,
                settings,
                owners,
                identity_source,
                sync_interval_secs,
            } => {
                let mut s = serde_json::Map::new();
                for kv in settings {
                    let (k, v) = kv
                        .split_once('=')
                        .ok_or_else(|| anyhow::anyhow!("--setting {kv:?}: use KEY=VALUE"))?;
                    let v = match v {
                        "true" => Value::Bool(true),
                        "false" => Value::Bool(false),
                        _ => Value::String(v.to_owned()),
                    };
                    s.insert(k.to_owned(), v);
                }
                let mut body = json!({"kind": kind, "name": name, "settings": s, "owners": owners});
                if let Some(b) = identity_source {
                    body["identity_source"] = json!(b);
                }
                if let Some(i) = sync_interval_secs {
                    body["sync_interval_secs"] = json!(i);
                }
                print(&Client::new(client).post("/api/v1/connectors", body).await?)
            }
            ConnectorsCommand::Sync { client, id, wait } => {
                let c = Client::new(client);
                let mut v = c
                    .post(&format!("/api/v1/connectors/{id}/sync"), Value::Null)
                    .await?;
                while wait && v["status"] == "syncing" {
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    v = c.get(&format!("/api/v1/connectors/{id}")).await?;
                }
                print(&v)
            }
            ConnectorsCommand::Upload { client, id, file } => {
                let bytes = std::fs::read(&file)?;
                print(
                    &Client::new(client)
                        .post_bytes(&format!("/api/v1/connectors/{id}/syncs"), bytes)
                        .await?,
                )
            }
            ConnectorsCommand::Syncs { client, id } => print(
                &Client::new(client)
                    .get(&format!("/api/v1/connectors/{id}/syncs"))
                    .await?,
            ),
        }
    })
}
