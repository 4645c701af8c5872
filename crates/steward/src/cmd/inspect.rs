//! `steward inspect …`: read a .c1z and print its contents (issue 3).

#[derive(clap::Args)]
pub struct InspectArgs {
    /// What to show.
    pub what: String,
    /// The sync file.
    #[arg(short = 'f', long = "file", default_value = "sync.c1z")]
    pub file: std::path::PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

pub fn run(_args: InspectArgs) -> anyhow::Result<()> {
    anyhow::bail!("`steward inspect` is not built yet (issue 3)")
}
