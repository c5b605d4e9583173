//! Weir's control plane: the policy store, the admin API for `weirctl`, the discovery
//! stream that pushes snapshots to proxies, and the identity CA that certifies them.
//!
//! Start a server in-process with [`bind`] (learn the address, e.g. with port 0) and
//! [`Bound::serve`], or with [`serve`] in one call.

pub mod admin;
pub mod ca;
pub mod delta;
pub mod derived;
pub mod discovery;
pub mod health;
pub mod hub;
pub mod identity;
pub mod kubernetes;
pub mod leading;
pub mod registry;
pub mod replica;
pub mod server;
pub mod serving;
pub mod status;
pub mod store;
pub mod token;
pub mod world;

#[cfg(test)]
mod tests;

pub use identity::CaFiles;
pub use server::{Bound, DEFAULT_CERT_TTL, STORE_FILE, ServerConfig, ServerError, bind, serve};
pub use token::{AdminToken, TOKEN_FILE};
