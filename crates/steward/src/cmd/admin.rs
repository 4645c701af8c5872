//! `steward admin …`: administration of a platform database (no server needed).

use std::sync::Arc;

use steward_platform::{Platform, Role, SystemClock};

use super::serve::StoreArgs;

#[derive(clap::Subcommand)]
pub enum AdminCommand {
    /// Bearer tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(clap::Subcommand)]
pub enum TokenCommand {
    /// Mint a token: for a synced identity (--user) or with an admin role (--role, --name). Prints it once.
    Create {
        #[command(flatten)]
        store: StoreArgs,
        /// The identity (UPN or object id) the token acts as (role user).
        #[arg(long, conflicts_with = "role")]
        user: Option<String>,
        /// super_admin or connector_admin.
        #[arg(long, requires = "name")]
        role: Option<String>,
        /// A name for the token.
        #[arg(long)]
        name: Option<String>,
        /// Print the token record as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(c: AdminCommand) -> anyhow::Result<()> {
    let AdminCommand::Token(TokenCommand::Create {
        store,
        user,
        role,
        name,
        json,
    }) = c;
    let role = match role.as_deref() {
        Some(r) => Some(
            Role::parse(r)
                .ok_or_else(|| anyhow::anyhow!("unknown role {r:?}: use super_admin or connector_admin"))?,
        ),
        None => None,
    };
    let rt = super::runtime()?;
    rt.block_on(async move {
        let p = Platform::open(&store.options(), Arc::new(SystemClock)).await?;
        let t = p.create_token(user.as_deref(), role, name.as_deref()).await?;
        if json {
            println!("{}", serde_json::to_string(&t)?);
        } else {
            println!("{}", t.token);
            eprintln!(
                "token {} ({}, role {}) — shown only now",
                t.info.id,
                t.info.name,
                t.info.role.as_str()
            );
        }
        Ok(())
    })
}
