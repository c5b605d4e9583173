//! Weir's control plane: the policy store, the admin API for `weirctl`, and the discovery
//! stream that pushes snapshots to proxies.

/// The `weirctl` command-line client.
pub mod ctl;
