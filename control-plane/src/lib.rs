//! Weir's control plane: the policy store, the admin API for `weirctl`, and the discovery
//! stream that pushes snapshots to proxies.
//!
//! Start a server in-process with [`bind`] (learn the address, e.g. with port 0) and
//! [`Bound::serve`], or with [`serve`] in one call.

/// The `weirctl` command-line client.
pub mod ctl;

pub mod admin;
pub mod discovery;
pub mod hub;
pub mod registry;
pub mod server;
pub mod store;
pub mod token;

#[cfg(test)]
mod tests;

pub use server::{Bound, STORE_FILE, ServerConfig, ServerError, bind, serve};
pub use token::{AdminToken, TOKEN_FILE};
