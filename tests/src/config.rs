//! Writes the YAML config files (design §6) that standalone proxies read with
//! `--config`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

/// A `MeshConfig` with `mtls: permissive`, so proxy-to-proxy traffic is
/// plaintext and the tests need no identities.
pub const MESH_PERMISSIVE: &str = "\
apiVersion: weir/v1
kind: MeshConfig
metadata: { name: default }
spec: { mtls: permissive }
";

/// An `Endpoints` document for `name.namespace` at `addrs`.
pub fn endpoints(name: &str, namespace: &str, addrs: &[SocketAddr]) -> String {
    let list = addrs
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let mut doc = String::new();
    let _ = write!(
        doc,
        "apiVersion: weir/v1\nkind: Endpoints\nmetadata: {{ name: {name}, namespace: {namespace} }}\n\
         spec: {{ addresses: [{list}] }}\n"
    );
    doc
}

/// Joins documents into one multi-document YAML file.
pub fn documents(docs: &[&str]) -> String {
    docs.join("---\n")
}

/// The usual client-side file: permissive mesh plus where `echo` runs.
pub fn mesh_with_echo(addrs: &[SocketAddr]) -> String {
    documents(&[MESH_PERMISSIVE, &endpoints("echo", "default", addrs)])
}

/// Replaces `path` atomically (write + rename), so a proxy reloading on SIGHUP
/// never reads a half-written file.
pub fn write_atomic(path: &Path, contents: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)
}

/// A ServicePolicy for shop/payments splitting its default route between payments (`v1` %) and
/// payments-v2 (`v2` %).
pub fn split(v1: u32, v2: u32) -> String {
    format!(
        "apiVersion: weir/v1\nkind: ServicePolicy\nmetadata: {{ name: payments, namespace: shop }}\nspec:\n  service: payments\n  routes:\n    - name: default\n      backends: [ {{ service: payments, weight: {v1} }}, {{ service: payments-v2, weight: {v2} }} ]\n"
    )
}
