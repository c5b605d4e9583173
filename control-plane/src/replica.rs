//! This replica's name, shown beside each proxy in `weirctl status` and keying its shared state
//! in etcd: the hostname (the pod name in Kubernetes) unless `--replica-name` gives one.

use std::path::Path;

/// Kept in the data directory so a restarted replica (same pod, same directory) gets its name
/// back while its previous lease still holds it, instead of a suffixed one.
pub const INSTANCE_FILE: &str = "replica-id";

/// Used when the hostname cannot be read.
const FALLBACK: &str = "weir-control";

/// `HOSTNAME` (what Kubernetes sets to the pod name), else the kernel's hostname.
pub fn default_name() -> String {
    let from_env = std::env::var("HOSTNAME").ok();
    let from_kernel = || {
        ["/proc/sys/kernel/hostname", "/etc/hostname"]
            .iter()
            .find_map(|path| std::fs::read_to_string(path).ok())
    };
    let name = from_env
        .filter(|n| !n.trim().is_empty())
        .or_else(from_kernel)
        .unwrap_or_default();
    sanitise(&name)
}

/// A name safe as one etcd key segment: letters, digits, `.`, `-`, `_`; anything else becomes
/// `-`. Empty becomes `weir-control`.
pub fn sanitise(name: &str) -> String {
    let clean: String = name
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if clean.is_empty() {
        FALLBACK.to_string()
    } else {
        clean
    }
}

/// A random id for this data directory, made on first use: it tells a previous run of this
/// replica apart from another replica that happens to have the same hostname.
pub fn instance_id(data_dir: &Path) -> std::io::Result<String> {
    let path = data_dir.join(INSTANCE_FILE);
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let existing = existing.trim();
        if !existing.is_empty() {
            return Ok(existing.to_string());
        }
    }
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).map_err(|err| std::io::Error::other(err.to_string()))?;
    let id = hex::encode(id);
    std::fs::create_dir_all(data_dir)?;
    std::fs::write(&path, &id)?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_key_safe() {
        assert_eq!(sanitise("weir-control-0"), "weir-control-0");
        assert_eq!(sanitise(" cp a/b\n"), "cp-a-b");
        assert_eq!(sanitise(""), "weir-control");
        assert!(!default_name().is_empty());
    }

    #[test]
    fn instance_id_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = instance_id(dir.path()).expect("id");
        assert_eq!(instance_id(dir.path()).expect("again"), first);
        assert_eq!(first.len(), 32);
    }
}
