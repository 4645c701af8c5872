//! `steward request …`, `steward approve …`, `steward deny …` (clients of a running platform: STEWARD_URL,
//! STEWARD_TOKEN) and `steward audit …` (export through the API, or verify the chain on the database itself).

use std::sync::Arc;

use serde_json::json;
use steward_platform::{Platform, SystemClock};

use super::connectors::{Client, ClientArgs, block_on, print};
use super::serve::StoreArgs;

#[derive(clap::Subcommand)]
pub enum RequestCommand {
    /// What you may request, and why.
    Catalog {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Request an app entitlement (its id from `steward request catalog`).
    Create {
        #[command(flatten)]
        client: ClientArgs,
        /// The app entitlement id.
        entitlement: String,
        /// The app, if the entitlement id is ambiguous.
        #[arg(long)]
        app: Option<String>,
        /// Why you need it.
        #[arg(long)]
        justification: Option<String>,
        /// How long, in seconds (default: the policy's maximum).
        #[arg(long)]
        duration: Option<i64>,
    },
    /// Your requests (admins: --all for everyone's).
    List {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        all: bool,
        #[arg(long)]
        state: Option<String>,
    },
    /// One request with its steps and history.
    Get {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
    },
    /// Withdraw a request before it is provisioned.
    Cancel {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
    },
    /// Retry a failed request's provisioning (admins, app owners).
    Retry {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
    },
    /// End provisioned access now.
    Revoke {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
    },
}

/// `steward approve`: list what waits for you, or approve one.
#[derive(clap::Args)]
pub struct ApproveArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The request to approve; without it, list the requests waiting for you.
    id: Option<String>,
    #[arg(long)]
    comment: Option<String>,
}

/// `steward deny ID`.
#[derive(clap::Args)]
pub struct DenyArgs {
    #[command(flatten)]
    client: ClientArgs,
    id: String,
    #[arg(long)]
    comment: Option<String>,
}

#[derive(clap::Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain of the audit log in the database (exit status 1 if it was tampered with).
    Verify {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Export the audit log through the API (--format jsonl|csv; filters as the API's).
    Export {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long, default_value = "jsonl")]
        format: String,
        #[arg(long)]
        action: Option<String>,
        #[arg(long)]
        since: Option<String>,
    },
}

pub fn run(c: RequestCommand) -> anyhow::Result<()> {
    block_on(async move {
        match c {
            RequestCommand::Catalog { client } => print(&Client::new(client).get("/api/v1/catalog").await?),
            RequestCommand::Create {
                client,
                entitlement,
                app,
                justification,
                duration,
            } => print(
                &Client::new(client)
                    .post(
                        "/api/v1/requests",
                        json!({"entitlement": entitlement, "app": app, "justification": justification, "duration": duration}),
                    )
                    .await?,
            ),
            RequestCommand::List { client, all, state } => {
                let mut qs = format!("?mine={}", !all);
                if let Some(s) = state {
                    qs.push_str(&format!("&state={s}"));
                }
                print(&Client::new(client).get(&format!("/api/v1/requests{qs}")).await?)
            }
            RequestCommand::Get { client, id } => {
                print(&Client::new(client).get(&format!("/api/v1/requests/{id}")).await?)
            }
            RequestCommand::Cancel { client, id } => print(
                &Client::new(client)
                    .post(&format!("/api/v1/requests/{id}/cancel"), json!({}))
                    .await?,
            ),
            RequestCommand::Retry { client, id } => print(
                &Client::new(client)
                    .post(&format!("/api/v1/requests/{id}/retry"), json!({}))
                    .await?,
            ),
            RequestCommand::Revoke { client, id } => print(
                &Client::new(client)
                    .post(&format!("/api/v1/requests/{id}/revoke"), json!({}))
                    .await?,
            ),
        }
    })
}

pub fn approve(a: ApproveArgs) -> anyhow::Result<()> {
    block_on(async move {
        let c = Client::new(a.client);
        match a.id {
            None => print(&c.get("/api/v1/approvals").await?),
            Some(id) => print(
                &c.post(
                    &format!("/api/v1/requests/{id}/approve"),
                    json!({"comment": a.comment}),
                )
                .await?,
            ),
        }
    })
}

pub fn deny(a: DenyArgs) -> anyhow::Result<()> {
    block_on(async move {
        print(
            &Client::new(a.client)
                .post(
                    &format!("/api/v1/requests/{}/deny", a.id),
                    json!({"comment": a.comment}),
                )
                .await?,
        )
    })
}

pub fn audit(c: AuditCommand) -> anyhow::Result<()> {
    match c {
        AuditCommand::Verify { store } => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let v = rt.block_on(async move {
                let p = Platform::open(&store.options(), Arc::new(SystemClock)).await?;
                anyhow::Ok(p.verify_audit().await?)
            })?;
            if v.ok {
                println!(
                    "audit log intact: {} entries, hash chain and head verified",
                    v.entries
                );
                Ok(())
            } else {
                anyhow::bail!(
                    "audit log TAMPERED: {} (checked {} entries)",
                    v.problem.unwrap_or_default(),
                    v.entries
                )
            }
        }
        AuditCommand::Export {
            client,
            format,
            action,
            since,
        } => block_on(async move {
            let mut qs = format!("?format={format}");
            if let Some(a) = action {
                qs.push_str(&format!("&action={a}"));
            }
            if let Some(s) = since {
                qs.push_str(&format!("&since={s}"));
            }
            let text = Client::new(client)
                .get_text(&format!("/api/v1/audit{qs}"))
                .await?;
            print!("{text}");
            Ok(())
        }),
    }
}
