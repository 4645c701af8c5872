//! `steward azure …`: the Azure Infrastructure connector as a Baton-style command (issue 6).

#[derive(clap::Args)]
pub struct AzureArgs {}

pub fn run(_a: AzureArgs) -> anyhow::Result<()> {
    anyhow::bail!("`steward azure` is not built yet (issue 6)")
}

/// `steward bench azure`.
#[derive(clap::Args)]
pub struct BenchArgs {}

pub fn bench(_a: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("`steward bench azure` is not built yet (issue 6)")
}
