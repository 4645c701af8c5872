//! One module per subcommand.
pub mod bench;
pub mod demo;
pub mod diff;
pub mod entra;
pub mod inspect;
pub mod sim;
