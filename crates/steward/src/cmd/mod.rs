//! One module per subcommand.
pub mod demo;
pub mod diff;
pub mod inspect;
pub mod sim;
