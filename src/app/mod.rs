//! The app layer: one module per command. Each turns parsed arguments into what the domain needs,
//! resolving settings, policies, store and client once, then calls the domain modules (which never
//! import this layer).

pub mod backup;
pub mod policies;
pub mod prune;
pub mod restore;
pub mod run;
pub mod validate;
