//! The Entra ID connector (being built).
