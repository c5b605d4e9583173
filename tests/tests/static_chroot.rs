//! The `weir` image (deploy/Dockerfile) is `FROM scratch`: static binaries and CA roots, no
//! loader, no libc, no shell. These tests build the binaries the same way
//! (`-C target-feature=+crt-static`) and run them in an empty root with `chroot` as uid 2102:
//! only the binaries, the CA roots, /dev/null, /dev/random and /dev/urandom (from the container runtime), the data directory the PersistentVolume provides and the
//! /etc/hosts the kubelet mounts into every container.
//!
//! Binaries: `WEIR_STATIC_BIN_DIR` (e.g. copied out of an image build) if set, else this test
//! builds them once with its own target directory, `target/static` (a debug build: the first
//! takes as long as the workspace's, later ones only rebuild what changed; CI builds nothing
//! else with these flags, so this is the cheapest place to do it).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use weir_tests::process::ChildGuard;
use weir_tests::util::{TestDir, free_ports};

const BINARIES: &[&str] = &["weir-proxy", "weir-control", "weirctl"];
/// The image's user (deploy/README.md).
const UID: u32 = 2102;
const PT_INTERP: u32 = 3;

/// Why these tests cannot run here (chroot needs root), or `None`. Under CI they must run.
fn unavailable() -> Option<&'static str> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    match (root, std::env::var_os("CI").is_some()) {
        (true, _) => None,
        (false, true) => panic!("static_chroot needs root under CI"),
        (false, false) => Some("chroot needs root"),
    }
}

fn static_bin_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("WEIR_STATIC_BIN_DIR") {
            return PathBuf::from(dir);
        }
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace root")
            .to_path_buf();
        let target_dir = workspace.join("target/static");
        let target = env!("WEIR_BUILD_TARGET");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(&workspace)
            .args([
                "build",
                "--target",
                target,
                "-p",
                "weir-proxy",
                "-p",
                "weir-control",
                "-p",
                "weirctl",
                "--bins",
            ])
            .env("CARGO_TARGET_DIR", &target_dir)
            // CARGO_ENCODED_RUSTFLAGS would win over RUSTFLAGS.
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .status()
            .expect("run cargo build");
        assert!(status.success(), "static build failed: {status}");
        target_dir.join(target).join("debug")
    })
    .clone()
}

/// The program headers of an ELF64 file: whether one asks for an interpreter (ld.so).
fn has_interpreter(elf: &[u8]) -> Result<bool, String> {
    let u16_at = |at: usize| {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        elf.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |at: usize| {
        elf.get(at..at + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes)
    };
    if elf.get(..6) != Some(b"\x7fELF\x02\x01") {
        return Err("not a little-endian ELF64 file".into());
    }
    let phoff = u64_at(0x20).ok_or("short header")? as usize;
    let phentsize = u16_at(0x36).ok_or("short header")? as usize;
    let phnum = u16_at(0x38).ok_or("short header")? as usize;
    let mut interp = false;
    for i in 0..phnum {
        let kind = u32_at(phoff + i * phentsize).ok_or("program header past the end")?;
        interp |= kind == PT_INTERP;
    }
    Ok(interp)
}

#[test]
fn binaries_are_static() {
    let dir = static_bin_dir();
    for name in BINARIES {
        let path = dir.join(name);
        let elf = std::fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        assert_eq!(
            has_interpreter(&elf),
            Ok(false),
            "{name} asks for a dynamic loader"
        );
        // ldd agrees: "statically linked" (static-pie) or "not a dynamic executable".
        let out = Command::new("ldd").arg(&path).output().expect("run ldd");
        let said = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            said.contains("statically linked") || said.contains("not a dynamic executable"),
            "ldd {name}: {said}"
        );
    }
    // The check itself tells the two apart: the test binary is dynamic.
    let me = std::fs::read(std::env::current_exe().expect("current_exe")).expect("read self");
    assert_eq!(has_interpreter(&me), Ok(true));
}

fn chroot_bin() -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("chroot"))
        .find(|path| path.is_file())
        .expect("chroot (coreutils) is needed")
}

/// An empty root holding what the image and the kubelet give the binaries.
struct Root {
    dir: TestDir,
}

impl Root {
    fn new() -> Root {
        let dir = TestDir::new("chroot").expect("temp dir");
        let root = dir.path();
        let bin = root.join("usr/local/bin");
        std::fs::create_dir_all(&bin).expect("mkdir bin");
        for name in BINARIES {
            std::fs::copy(static_bin_dir().join(name), bin.join(name)).expect("copy binary");
        }
        let certs = root.join("etc/ssl/certs");
        std::fs::create_dir_all(&certs).expect("mkdir certs");
        std::fs::copy(
            "/etc/ssl/certs/ca-certificates.crt",
            certs.join("ca-certificates.crt"),
        )
        .expect("copy CA roots");
        // The kubelet mounts /etc/hosts into every container; names resolve through it.
        std::fs::write(
            root.join("etc/hosts"),
            "127.0.0.1 localhost\n::1 localhost\n",
        )
        .expect("write hosts");
        // The container runtime gives every container /dev/null, /dev/random and /dev/urandom; getrandom
        // polls /dev/random and reads /dev/urandom in a static binary (its dlsym probe for glibc's getrandom fails).
        std::fs::create_dir_all(root.join("dev")).expect("mkdir dev");
        for (name, minor) in [("null", 3), ("random", 8), ("urandom", 9)] {
            let path = std::ffi::CString::new(
                root.join("dev")
                    .join(name)
                    .into_os_string()
                    .into_encoded_bytes(),
            )
            .expect("no NUL in the path");
            // SAFETY: mknod(2) reads a NUL-terminated path; we are root (checked by callers).
            let rc = unsafe {
                libc::mknod(
                    path.as_ptr(),
                    libc::S_IFCHR | 0o666,
                    libc::makedev(1, minor),
                )
            };
            assert_eq!(
                rc,
                0,
                "mknod /dev/{name}: {}",
                std::io::Error::last_os_error()
            );
        }
        // The PVC at /var/lib/weir (group-writable for fsGroup 2102 in a pod; owned here).
        for dir in ["var/lib/weir", "var/run/weir"] {
            let path = root.join(dir);
            std::fs::create_dir_all(&path).expect("mkdir data");
            std::os::unix::fs::chown(&path, Some(UID), Some(UID)).expect("chown data");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .expect("chmod data");
        }
        Root { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `chroot --userspec=2102:2102 ROOT /usr/local/bin/BIN` with the image's environment.
    fn command(&self, bin: &str) -> Command {
        // Resolved here: the child's PATH below (the image's) would not find it.
        let mut cmd = Command::new(chroot_bin());
        cmd.arg(format!("--userspec={UID}:{UID}"))
            .arg(self.path())
            .arg(format!("/usr/local/bin/{bin}"))
            .env_clear()
            .env("PATH", "/usr/local/bin")
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, bin: &str, args: &[&str]) -> Output {
        let out = self.command(bin).args(args).output().expect("run chroot");
        assert!(
            out.status.success(),
            "{bin} {args:?} in the empty root: {}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn commands_run_in_an_empty_root() {
    if let Some(why) = unavailable() {
        eprintln!("skipping: {why}");
        return;
    }
    let root = Root::new();
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        stdout(&root.run("weirctl", &["--version"])).trim(),
        format!("weirctl {version}")
    );
    assert!(stdout(&root.run("weir-proxy", &["--help"])).contains("init"));
    assert!(stdout(&root.run("weir-control", &["serve", "--help"])).contains("--admin-addr"));
    // The manifests are in the binary, not in files the image lacks.
    assert!(stdout(&root.run("weirctl", &["install"])).contains("kind: StatefulSet"));
}

/// `GET path` on `addr`: the status code.
fn get(addr: SocketAddr, path: &str) -> std::io::Result<u16> {
    let mut tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )?;
    let mut reply = String::new();
    tcp.read_to_string(&mut reply)?;
    reply
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP reply: {reply:?}")))
}

/// Polls `GET path` until it answers 200.
fn wait_ready(addr: SocketAddr, what: &str, guard: &mut ChildGuard, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(200) = get(addr, "/ready") {
            return;
        }
        if let Ok(Some(status)) = guard.try_wait() {
            panic!("{what} exited ({status}):\n{}", guard.log_tail());
        }
        assert!(
            Instant::now() < deadline,
            "{what} not ready within {within:?}:\n{}",
            guard.log_tail()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The address logged after `marker` in `guard`'s log.
fn logged_addr(guard: &mut ChildGuard, marker: &str, within: Duration) -> SocketAddr {
    let deadline = Instant::now() + within;
    loop {
        let log = guard
            .log_path()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default();
        if let Some(addr) = log
            .split_once(marker)
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
        {
            return addr;
        }
        if let Ok(Some(status)) = guard.try_wait() {
            panic!("exited ({status}) before logging {marker:?}:\n{log}");
        }
        assert!(
            Instant::now() < deadline,
            "{marker:?} not logged within {within:?}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn control_plane_and_proxy_serve_from_an_empty_root() {
    if let Some(why) = unavailable() {
        eprintln!("skipping: {why}");
        return;
    }
    let root = Root::new();
    let logs = TestDir::new("chroot-logs").expect("log dir");
    let mut control = root.command("weir-control");
    control
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .args(["--data-dir", "/var/lib/weir"])
        .env("WEIR_LOG", "info");
    let mut control = ChildGuard::spawn(
        "weir-control",
        &mut control,
        Some(&logs.join("control.log")),
        false,
    )
    .expect("start weir-control in the chroot");
    let start = Duration::from_secs(30);
    let health = logged_addr(&mut control, "health endpoints on ", start);
    let grpc = logged_addr(&mut control, "weir-control listening on ", start);
    wait_ready(health, "weir-control", &mut control, start);
    assert_eq!(get(health, "/live").expect("/live"), 200);

    // weirctl in the chroot: TLS (ring) to a name resolved through /etc/hosts.
    let server = format!("https://localhost:{}", grpc.port());
    let ctl = |args: &[&str]| {
        let mut all = vec![
            "--server",
            &server,
            "--trust-bundle",
            "/var/lib/weir/trust-bundle.pem",
            "--token-file",
            "/var/lib/weir/admin.token",
        ];
        all.extend_from_slice(args);
        stdout(&root.run("weirctl", &all))
    };
    let token = ctl(&["token", "create", "-n", "default", "--sa", "web"]);
    let token_path = root.path().join("var/run/weir/token");
    std::fs::write(&token_path, token.trim()).expect("write workload token");
    std::os::unix::fs::chown(&token_path, Some(UID), Some(UID)).expect("chown token");

    // A proxy in the same root gets its certificate and config: ready only then.
    let ports = free_ports(3).expect("free ports");
    let addr = |port: u16| format!("127.0.0.1:{port}");
    let mut proxy = root.command("weir-proxy");
    proxy
        .arg("run")
        .args([
            "--service",
            "web",
            "--namespace",
            "default",
            "--service-account",
            "web",
        ])
        .args([
            "--inbound-addr",
            &addr(ports[0]),
            "--outbound-addr",
            &addr(ports[1]),
        ])
        .args(["--admin-addr", &addr(ports[2])])
        .args(["--control-plane", &server])
        .args(["--trust-bundle", "/var/lib/weir/trust-bundle.pem"])
        .args(["--token-file", "/var/run/weir/token"])
        .env("WEIR_LOG", "info");
    let mut proxy = ChildGuard::spawn(
        "weir-proxy",
        &mut proxy,
        Some(&logs.join("proxy.log")),
        false,
    )
    .expect("start weir-proxy in the chroot");
    let admin: SocketAddr = addr(ports[2]).parse().expect("admin addr");
    wait_ready(admin, "weir-proxy", &mut proxy, start);
    let status = ctl(&["status", "-o", "json"]);
    assert!(
        status.contains("web"),
        "weirctl status does not list the proxy: {status}"
    );

    proxy.kill();
    control.kill();
}
