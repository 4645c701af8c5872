//! `steward admin …`: administration of a platform database (issue 7).

#[derive(clap::Subcommand)]
pub enum AdminCommand {
    /// Not built yet (issue 7).
    Token,
}

pub fn run(_c: AdminCommand) -> anyhow::Result<()> {
    anyhow::bail!("`steward admin` is not built yet (issue 7)")
}
