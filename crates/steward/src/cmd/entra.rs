//! `steward entra …`: the Entra ID connector as a Baton-style command (issue 4).

#[derive(clap::Args)]
pub struct EntraArgs {}

pub fn run(_a: EntraArgs) -> anyhow::Result<()> {
    anyhow::bail!("`steward entra` is not built yet (issue 4)")
}

/// `steward bench entra`.
#[derive(clap::Args)]
pub struct BenchArgs {}

pub fn bench(_a: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("`steward bench entra` is not built yet (issue 4)")
}
