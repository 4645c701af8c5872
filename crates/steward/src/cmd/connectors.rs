//! `steward connectors …`: the platform's connectors from the command line (issue 7).

#[derive(clap::Subcommand)]
pub enum ConnectorsCommand {
    /// Not built yet (issue 7).
    List,
}

pub fn run(_c: ConnectorsCommand) -> anyhow::Result<()> {
    anyhow::bail!("`steward connectors` is not built yet (issue 7)")
}
