//! Root rotation of the generated CA, in three phases so that no request fails on the way:
//!
//! 1. **prepare**: a new root is made and joins the trust bundle; the old root still signs.
//!    Discovery pushes the bundle, so every proxy trusts both roots before any certificate
//!    from the new one exists.
//! 2. **activate**: the new root signs; the old one stays in the bundle. The generation goes
//!    up, and proxies that see it renew within a few seconds, so leaves from both roots meet
//!    peers that trust both.
//! 3. **finish**: the old root leaves the bundle, once proxies have had time to renew.
//!
//! The CA from `--ca-cert` files is rotated by the user's PKI instead (new files with a bundle
//! holding both roots, then a restart), so these calls refuse it.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::ca::CaPem;

/// Store key of the rotation state (JSON [`CaTrust`]); the signing root stays under `ca`.
pub const CA_TRUST_SECRET: &str = "ca-trust";

/// How long `finish` waits after `activate` unless forced: proxies renew within
/// [`RENEW_SPREAD`] of seeing the new generation; the rest covers a proxy reconnecting.
pub const FINISH_AFTER: Duration = Duration::from_secs(30);

/// Proxies spread their early renewal over this window, so a rotation does not make the whole
/// fleet call Certify in the same second.
pub const RENEW_SPREAD: Duration = Duration::from_secs(5);

/// What is trusted besides the signing root.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct CaTrust {
    /// Bumped by every `activate`.
    pub generation: u64,
    /// The prepared root, trusted but not yet signing.
    pub next: Option<CaPem>,
    /// The root that signed before the last `activate`, trusted until `finish`.
    pub previous_cert_pem: Option<String>,
    pub activated_unix_ms: i64,
}

impl CaTrust {
    /// The bundle: the signing root, then the next or previous one.
    pub fn bundle(&self, active_cert_pem: &str) -> String {
        let mut out = active_cert_pem.to_owned();
        for extra in [
            self.next.as_ref().map(|n| n.cert_pem.as_str()),
            self.previous_cert_pem.as_deref(),
        ]
        .into_iter()
        .flatten()
        {
            if !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(extra);
        }
        out
    }

    pub fn phase(&self) -> &'static str {
        match (&self.next, &self.previous_cert_pem) {
            (Some(_), _) => "prepared",
            (None, Some(_)) => "activated",
            (None, None) => "idle",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Prepare,
    Activate,
    Finish,
}

impl std::str::FromStr for Phase {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "prepare" => Ok(Phase::Prepare),
            "activate" => Ok(Phase::Activate),
            "finish" => Ok(Phase::Finish),
            other => Err(format!(
                "unknown rotation phase {other:?}: expected prepare, activate or finish"
            )),
        }
    }
}

/// Why a phase cannot run now, in words that say what to run instead.
pub fn check(trust: &CaTrust, phase: Phase, force: bool, now_ms: i64) -> Result<(), String> {
    match (phase, trust.phase()) {
        (Phase::Prepare, "idle") | (Phase::Activate, "prepared") => Ok(()),
        (Phase::Finish, "activated") => {
            let waited = Duration::from_millis(
                u64::try_from(now_ms.saturating_sub(trust.activated_unix_ms)).unwrap_or(0),
            );
            if force || waited >= FINISH_AFTER {
                Ok(())
            } else {
                Err(format!(
                    "the new root was activated {}s ago; proxies renew within {}s of seeing it. \
                     Wait {}s more (check `weirctl status`), or pass --force",
                    waited.as_secs(),
                    RENEW_SPREAD.as_secs(),
                    (FINISH_AFTER - waited).as_secs().max(1)
                ))
            }
        }
        (Phase::Prepare, "prepared") => {
            Err("a new root is already prepared: run `weirctl ca rotate activate` next".into())
        }
        (Phase::Prepare, _) | (Phase::Activate, "activated") => {
            Err("the last rotation is not finished: run `weirctl ca rotate finish` first".into())
        }
        (Phase::Activate, _) => {
            Err("nothing to activate: run `weirctl ca rotate prepare` first".into())
        }
        (Phase::Finish, _) => Err("no rotation to finish: the bundle holds one root".into()),
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem(name: &str) -> CaPem {
        CaPem {
            cert_pem: format!("{name}\n"),
            key_pem: String::new(),
        }
    }

    #[test]
    fn phases_follow_each_other() {
        let mut t = CaTrust::default();
        assert_eq!(t.phase(), "idle");
        assert!(check(&t, Phase::Activate, false, 0).is_err());
        assert!(check(&t, Phase::Finish, true, 0).is_err());
        check(&t, Phase::Prepare, false, 0).expect("prepare from idle");
        t.next = Some(pem("new"));
        assert_eq!(t.bundle("old\n"), "old\nnew\n");
        assert!(check(&t, Phase::Prepare, false, 0).is_err());
        check(&t, Phase::Activate, false, 0).expect("activate after prepare");
        t.next = None;
        t.previous_cert_pem = Some("old\n".into());
        t.activated_unix_ms = 1_000;
        assert_eq!(t.bundle("new\n"), "new\nold\n");
        let early = check(&t, Phase::Finish, false, 2_000).expect_err("too early");
        assert!(early.contains("--force"), "{early}");
        check(&t, Phase::Finish, true, 2_000).expect("forced");
        check(&t, Phase::Finish, false, 1_000 + 30_000).expect("after the wait");
    }
}
