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
