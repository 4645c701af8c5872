//! `steward apps …`: the platform's app catalog from the command line (STEWARD_URL, STEWARD_TOKEN).

use serde_json::{Value, json};

use super::connectors::{Client, ClientArgs, block_on, print};

#[derive(clap::Subcommand)]
pub enum AppsCommand {
    /// List apps (--managed true|false, --q search).
    List {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        managed: Option<bool>,
        #[arg(long)]
        q: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// One app with its entitlements.
    Get {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
    },
    /// Create a managed app.
    Create {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        #[arg(long = "owner")]
        owners: Vec<String>,
    },
    /// Manage a discovered app (nothing changes in the IdP).
    Manage {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
        #[arg(long = "owner")]
        owners: Vec<String>,
    },
    /// The IdP entitlements linked to an app (groups assigned to its enterprise application).
    Linked {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
    },
    /// Bind a linked entitlement: --virtual-role NAME | --provision-for ENTITLEMENT | --skip.
    Link {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
        idp_entitlement: String,
        #[arg(long, group = "action")]
        virtual_role: Option<String>,
        #[arg(long, group = "action")]
        provision_for: Option<String>,
        #[arg(long, group = "action")]
        skip: bool,
    },
}

pub fn run(c: AppsCommand) -> anyhow::Result<()> {
    block_on(async move {
        match c {
            AppsCommand::List {
                client,
                managed,
                q,
                limit,
            } => {
                let mut qs = format!("?limit={limit}");
                if let Some(m) = managed {
                    qs.push_str(&format!("&managed={m}"));
                }
                if let Some(q) = q {
                    qs.push_str(&format!("&q={q}"));
                }
                print(&Client::new(client).get(&format!("/api/v1/apps{qs}")).await?)
            }
            AppsCommand::Get { client, id } => {
                print(&Client::new(client).get(&format!("/api/v1/apps/{id}")).await?)
            }
            AppsCommand::Create {
                client,
                name,
                description,
                owners,
            } => print(
                &Client::new(client)
                    .post(
                        "/api/v1/apps",
                        json!({"name": name, "description": description, "owners": owners}),
                    )
                    .await?,
            ),
            AppsCommand::Manage { client, id, owners } => print(
                &Client::new(client)
                    .post(&format!("/api/v1/apps/{id}/manage"), json!({"owners": owners}))
                    .await?,
            ),
            AppsCommand::Linked { client, id } => print(
                &Client::new(client)
                    .get(&format!("/api/v1/apps/{id}/linked-entitlements"))
                    .await?,
            ),
            AppsCommand::Link {
                client,
                id,
                idp_entitlement,
                virtual_role,
                provision_for,
                skip,
            } => {
                let body: Value = match (virtual_role, provision_for, skip) {
                    (Some(n), None, false) => json!({"action": "virtual_role", "name": n}),
                    (None, Some(e), false) => json!({"action": "provision_for", "entitlement": e}),
                    (None, None, true) => json!({"action": "skip"}),
                    _ => {
                        anyhow::bail!("give one of --virtual-role NAME, --provision-for ENTITLEMENT, --skip")
                    }
                };
                print(
                    &Client::new(client)
                        .post(
                            &format!("/api/v1/apps/{id}/linked-entitlements/{idp_entitlement}"),
                            body,
                        )
                        .await?,
                )
            }
        }
    })
}
