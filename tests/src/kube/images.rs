//! The images of the injected pod, as directories the test kubelet mounts at
//! `/usr/local/bin`: what deploy/Dockerfile puts in them, from this build.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use super::pod::Image;

/// Debian's default PATH, which the weir-init image (bookworm-slim) keeps.
const DEBIAN_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn image_dir(root: &Path, name: &str, bins: &[PathBuf]) -> anyhow::Result<PathBuf> {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir)?;
    for bin in bins {
        let file = bin.file_name().context("binary without a name")?;
        let dest = dir.join(file);
        // A hard link where possible: the debug binaries are large.
        if std::fs::hard_link(bin, &dest).is_err() {
            std::fs::copy(bin, &dest).with_context(|| format!("copying {}", bin.display()))?;
        }
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    Ok(dir)
}

/// `ghcr.io/weir-dev/weir`: the three binaries, PATH=/usr/local/bin, user 2102.
pub fn weir(root: &Path) -> anyhow::Result<Image> {
    let bins = [
        crate::bins::proxy_bin(),
        crate::bins::control_bin(),
        crate::bins::weirctl_bin(),
    ];
    Ok(Image {
        dir: image_dir(root, "weir", &bins)?,
        path_env: "/usr/local/bin".into(),
        user: Some((2102, 2102)),
    })
}

/// `ghcr.io/weir-dev/weir-init`: weir-proxy and iptables whose multi-call binaries carry
/// `cap_net_admin,cap_net_raw+ep` (copies: setcap must not touch the host's own), user 65534.
pub fn weir_init(root: &Path) -> anyhow::Result<Image> {
    let dir = image_dir(root, "weir-init", &[crate::bins::proxy_bin()])?;
    let mut found = false;
    for flavour in ["nft", "legacy"] {
        let Ok(multi) = std::fs::canonicalize(format!("/usr/sbin/xtables-{flavour}-multi")) else {
            continue;
        };
        found = true;
        let copy = dir.join(format!("xtables-{flavour}-multi"));
        std::fs::copy(&multi, &copy).with_context(|| format!("copying {}", multi.display()))?;
        let status = Command::new("setcap")
            .arg("cap_net_admin,cap_net_raw+ep")
            .arg(&copy)
            .status()
            .context("setcap (apt: libcap2-bin)")?;
        if !status.success() {
            bail!("setcap on {} failed", copy.display());
        }
        for tool in ["iptables", "ip6tables"] {
            for suffix in ["save", "restore"] {
                std::os::unix::fs::symlink(
                    format!("xtables-{flavour}-multi"),
                    dir.join(format!("{tool}-{flavour}-{suffix}")),
                )?;
            }
        }
    }
    if !found {
        bail!("no /usr/sbin/xtables-*-multi (apt: iptables)");
    }
    Ok(Image {
        dir,
        path_env: DEBIAN_PATH.into(),
        user: Some((65534, 65534)),
    })
}

/// The test app image: `weir-testapp`, user 1000 (an app that knows nothing of the mesh).
pub fn testapp(root: &Path) -> anyhow::Result<Image> {
    Ok(Image {
        dir: image_dir(root, "testapp", &[crate::bins::testapp_bin()])?,
        path_env: "/usr/local/bin".into(),
        user: Some((1000, 1000)),
    })
}
