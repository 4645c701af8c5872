//! One module per subcommand.
pub mod admin;
pub mod apps;
pub mod azure;
pub mod bench;
pub mod connectors;
pub mod demo;
pub mod diff;
pub mod entra;
pub mod inspect;
pub mod request;
pub mod serve;
pub mod sim;

/// The multi-threaded async runtime each subcommand that talks to the network or a database runs on.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}
