//! `steward diff OLD NEW`: compare two syncs (issue 3).

#[derive(clap::Args)]
pub struct DiffArgs {
    pub old: std::path::PathBuf,
    pub new: std::path::PathBuf,
    #[arg(long)]
    pub json: bool,
}

pub fn run(_args: DiffArgs) -> anyhow::Result<()> {
    anyhow::bail!("`steward diff` is not built yet (issue 3)")
}
