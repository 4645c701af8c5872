//! `steward apps …`: the platform's app catalog from the command line (issue 7).

#[derive(clap::Subcommand)]
pub enum AppsCommand {
    /// Not built yet (issue 7).
    List,
}

pub fn run(_c: AppsCommand) -> anyhow::Result<()> {
    anyhow::bail!("`steward apps` is not built yet (issue 7)")
}
