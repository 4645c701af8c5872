//! `steward serve`: the governance platform (issue 7).

#[derive(clap::Args)]
pub struct ServeArgs {}

pub fn run(_a: ServeArgs) -> anyhow::Result<()> {
    anyhow::bail!("`steward serve` is not built yet (issue 7)")
}

/// `steward bench platform`.
#[derive(clap::Args)]
pub struct BenchArgs {}

pub fn bench(_a: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("`steward bench platform` is not built yet (issue 7)")
}
