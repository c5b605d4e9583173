//! Finds the binaries under test, building `weir-proxy` first so that
//! `cargo test --workspace` works on a fresh clone (cargo does not build another
//! package's binaries for an integration test).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The profile directory (`target/debug`, `target/release`, ...) of the running
/// test executable: the nearest ancestor that contains `deps/`.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors()
        .skip(1)
        .find(|dir| dir.join("deps").is_dir())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| panic!("no ancestor of {} contains deps/", exe.display()))
}

/// Path of `weir-proxy`, built once per test process. `WEIR_PROXY_BIN` overrides
/// both the path and the build (e.g. to test an installed binary).
pub fn proxy_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(path) = std::env::var_os("WEIR_PROXY_BIN") {
            return PathBuf::from(path);
        }
        let dir = profile_dir();
        build_proxy(&dir);
        let bin = dir.join("weir-proxy");
        assert!(
            bin.is_file(),
            "cargo test --workspace --no-run succeeded but {} does not exist",
            bin.display()
        );
        bin
    })
    .clone()
}

/// Path of `weir-control` (same build as `weir-proxy`).
pub fn control_bin() -> PathBuf {
    sibling_of_proxy("weir-control")
}

/// Path of `weirctl` (same build as `weir-proxy`).
pub fn weirctl_bin() -> PathBuf {
    sibling_of_proxy("weirctl")
}

fn sibling_of_proxy(name: &str) -> PathBuf {
    let proxy = proxy_bin();
    let bin = proxy.with_file_name(name);
    assert!(
        bin.is_file(),
        "{} missing after the workspace build",
        bin.display()
    );
    bin
}

/// Path of this crate's `weir-testapp`, which cargo builds before running the
/// integration tests of this package.
pub fn testapp_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("WEIR_TESTAPP_BIN") {
        return PathBuf::from(path);
    }
    let bin = profile_dir().join("weir-testapp");
    assert!(
        bin.is_file(),
        "{} missing: run through `cargo test -p weir-tests`, which builds it",
        bin.display()
    );
    bin
}

fn build_proxy(profile_dir: &Path) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate lives inside the workspace");
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        // The same command as the README's (`cargo test --workspace`), so the units
        // it builds have the outer run's features and are already fresh: a narrower
        // `cargo build -p weir-proxy` resolves features differently and recompiles
        // half the dependency graph. weir-proxy, weir-control and weirctl (package
        // `weirctl`, in ctl/) have integration tests, so their binaries are part of
        // this build.
        .args(["test", "--workspace", "--no-run", "--quiet"]);
    // Same profile as this test executable, so the binary lands next to it.
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(other) => {
            cmd.args(["--profile", other]);
        }
        None => {}
    }
    // Only name the target dir when it is certainly the root one (cargo tags it):
    // covers `--target-dir` given to the outer cargo without env vars.
    if let Some(target) = profile_dir.parent()
        && target.join("CACHEDIR.TAG").is_file()
    {
        cmd.arg("--target-dir").arg(target);
    }
    eprintln!("weir-tests: building weir-proxy: {cmd:?}");
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed with {status}");
}
