//! Runs a pod spec the way the kubelet does, with the pieces this machine has: the pod is a
//! network namespace, each container a process started from the spec's own `command`, `args`,
//! `env` (downward API and `$(VAR)` expansion included), `volumeMounts` and `securityContext`
//! (uid/gid, capabilities, no-new-privileges, read-only root), inside a private mount
//! namespace where the image's files sit at `/usr/local/bin` and the volumes at their mount
//! paths. Init containers run in order to completion; one with `restartPolicy: Always` is a
//! native sidecar: started, its startup probe awaited, then the next one. App containers start
//! last; their startup and readiness probes are polled from the node namespace, as the
//! kubelet's are. Nothing about Weir is hard-coded here: a spec that would break a real pod
//! breaks this run.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde_json::Value;

use super::cluster::PodNet;
use crate::netns::Net;
use crate::process::ChildGuard;

/// What an image gives a container: its files (mounted at `/usr/local/bin`), its `PATH`, and
/// its `USER` when the spec names none.
pub struct Image {
    pub dir: PathBuf,
    pub path_env: String,
    pub user: Option<(u32, u32)>,
}

/// Mints a projected service-account token: (namespace, service account, pod, audience, ttl).
pub type TokenSource<'a> = dyn Fn(&str, &str, &str, &str, u64) -> anyhow::Result<String> + 'a;

/// Everything outside the pod spec that the kubelet would supply.
pub struct PodContext<'a> {
    pub name: String,
    pub namespace: String,
    pub images: &'a HashMap<String, Image>,
    pub token: &'a TokenSource<'a>,
    /// ConfigMaps of the pod's namespace: name → key → content.
    pub config_maps: &'a HashMap<String, BTreeMap<String, String>>,
    /// Where the pod's volumes and logs go.
    pub dir: PathBuf,
    /// Where probes come from (the node).
    pub node_net: Net,
}

pub struct Container {
    pub name: String,
    pub child: ChildGuard,
    spec: Value,
}

/// A running pod. Dropping it kills its containers, app containers first.
pub struct Pod {
    pub name: String,
    pub ip: Ipv4Addr,
    /// In start order: sidecars, then app containers (init containers have exited).
    pub containers: Vec<Container>,
    /// Init containers that ran to completion, with their logs.
    pub completed_init: Vec<(String, PathBuf)>,
}

impl Pod {
    pub fn container(&self, name: &str) -> Option<&Container> {
        self.containers.iter().find(|c| c.name == name)
    }

    pub fn log_of(&self, name: &str) -> String {
        self.container(name)
            .map(|c| c.child.log_tail())
            .unwrap_or_else(|| format!("(no container {name})"))
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        // The kubelet stops app containers before sidecars.
        while let Some(mut c) = self.containers.pop() {
            c.child.kill();
        }
    }
}

/// Starts `template` (a pod template: `metadata` and `spec`) in `net`.
pub async fn start(net: &PodNet, template: &Value, ctx: &PodContext<'_>) -> anyhow::Result<Pod> {
    let spec = template.get("spec").context("pod template has no spec")?;
    let service_account = spec
        .get("serviceAccountName")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_owned();
    let tools = Tools::find()?;
    std::fs::create_dir_all(&ctx.dir)?;
    let volumes = make_volumes(spec, ctx, &service_account)?;
    let downward = Downward {
        pod_name: ctx.name.clone(),
        namespace: ctx.namespace.clone(),
        pod_ip: net.ip.to_string(),
        service_account: service_account.clone(),
    };
    let mut pod = Pod {
        name: ctx.name.clone(),
        ip: net.ip,
        containers: Vec::new(),
        completed_init: Vec::new(),
    };
    for init in array(spec, "initContainers") {
        let name = str_field(init, "name")?;
        let log = ctx.dir.join(format!("{name}.log"));
        let mut child = spawn(&tools, net, spec, init, &volumes, &downward, ctx, &log)?;
        if init.get("restartPolicy").and_then(Value::as_str) == Some("Always") {
            let container = Container {
                name: name.to_owned(),
                child,
                spec: init.clone(),
            };
            await_probe(&container, "startupProbe", net.ip, &ctx.node_net).await?;
            pod.containers.push(container);
        } else {
            let status = child
                .wait_exit(Duration::from_secs(60))
                .await
                .with_context(|| format!("init container {name} did not finish"))?;
            if !status.success() {
                bail!(
                    "init container {name} failed ({status}); log:\n{}",
                    child.log_tail()
                );
            }
            pod.completed_init.push((name.to_owned(), log));
        }
    }
    let first_app = pod.containers.len();
    for container in array(spec, "containers") {
        let name = str_field(container, "name")?;
        let log = ctx.dir.join(format!("{name}.log"));
        let child = spawn(&tools, net, spec, container, &volumes, &downward, ctx, &log)?;
        pod.containers.push(Container {
            name: name.to_owned(),
            child,
            spec: container.clone(),
        });
    }
    for container in &pod.containers[first_app..] {
        await_probe(container, "startupProbe", net.ip, &ctx.node_net).await?;
        await_probe(container, "readinessProbe", net.ip, &ctx.node_net).await?;
    }
    for container in &pod.containers {
        if container.spec.get("restartPolicy").is_some() {
            await_probe(container, "readinessProbe", net.ip, &ctx.node_net).await?;
        }
        await_probe(container, "livenessProbe", net.ip, &ctx.node_net).await?;
    }
    Ok(pod)
}

/// Absolute paths of the host tools the container wrapper uses (the container's own `PATH`
/// holds only its image).
struct Tools {
    ip: PathBuf,
    unshare: PathBuf,
    sh: PathBuf,
    setpriv: PathBuf,
    env: PathBuf,
}

impl Tools {
    fn find() -> anyhow::Result<Self> {
        Ok(Self {
            ip: which("ip")?,
            unshare: which("unshare")?,
            sh: which("sh")?,
            setpriv: which("setpriv")?,
            env: which("env")?,
        })
    }
}

fn which(tool: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
        .with_context(|| format!("{tool} not found on PATH (util-linux, iproute2)"))
}

struct Downward {
    pod_name: String,
    namespace: String,
    pod_ip: String,
    service_account: String,
}

impl Downward {
    fn field(&self, path: &str) -> anyhow::Result<&str> {
        Ok(match path {
            "metadata.name" => &self.pod_name,
            "metadata.namespace" => &self.namespace,
            "status.podIP" | "status.hostIP" => &self.pod_ip,
            "spec.serviceAccountName" => &self.service_account,
            other => bail!("fieldRef {other} is not supported by the test kubelet"),
        })
    }
}

/// Volume name → host directory holding its files.
fn make_volumes(
    spec: &Value,
    ctx: &PodContext<'_>,
    service_account: &str,
) -> anyhow::Result<HashMap<String, PathBuf>> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = HashMap::new();
    for volume in array(spec, "volumes") {
        let name = str_field(volume, "name")?;
        let dir = ctx.dir.join("volumes").join(name);
        std::fs::create_dir_all(&dir)?;
        let mut files: Vec<(String, String)> = Vec::new();
        if volume.get("emptyDir").is_some() {
            // Nothing to write; its mode (below) lets any container uid use it.
        } else if let Some(cm) = volume.get("configMap") {
            files.extend(config_map_files(cm, ctx)?);
        } else if let Some(projected) = volume.get("projected") {
            for source in array(projected, "sources") {
                if let Some(sat) = source.get("serviceAccountToken") {
                    let audience = sat.get("audience").and_then(Value::as_str).unwrap_or("");
                    let ttl = sat
                        .get("expirationSeconds")
                        .and_then(Value::as_u64)
                        .unwrap_or(3600);
                    let path = str_field(sat, "path")?;
                    let token =
                        (ctx.token)(&ctx.namespace, service_account, &ctx.name, audience, ttl)?;
                    files.push((path.to_owned(), token));
                } else if let Some(cm) = source.get("configMap") {
                    files.extend(config_map_files(cm, ctx)?);
                } else {
                    bail!("volume {name}: projected source {source} is not supported");
                }
            }
        } else {
            bail!("volume {name}: only emptyDir, configMap and projected are supported");
        }
        for (path, content) in files {
            let file = dir.join(&path);
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&file, content)?;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644))?;
        }
        // emptyDir is world-writable, as the kubelet makes it; the others are read-only data.
        std::fs::set_permissions(
            &dir,
            std::fs::Permissions::from_mode(if volume.get("emptyDir").is_some() {
                0o777
            } else {
                0o755
            }),
        )?;
        out.insert(name.to_owned(), dir);
    }
    Ok(out)
}

fn config_map_files(cm: &Value, ctx: &PodContext<'_>) -> anyhow::Result<Vec<(String, String)>> {
    let name = str_field(cm, "name")?;
    let Some(data) = ctx.config_maps.get(name) else {
        // The kubelet keeps such a pod in ContainerCreating; so does the test.
        bail!(
            "configMap {name} does not exist in namespace {}",
            ctx.namespace
        );
    };
    Ok(data.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

/// Kubernetes' `$(VAR)` expansion: references to variables defined earlier are replaced,
/// `$$` is a literal `$`, anything else is left as written.
fn expand(text: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
            && let Some((_, value)) = env.iter().rev().find(|(k, _)| k == &inner[..end])
        {
            out.push_str(value);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The default capabilities a container runtime (containerd, CRI-O) grants.
const DEFAULT_CAPS: &[&str] = &[
    "chown",
    "dac_override",
    "fsetid",
    "fowner",
    "mknod",
    "net_raw",
    "setgid",
    "setuid",
    "setfcap",
    "setpcap",
    "net_bind_service",
    "sys_chroot",
    "kill",
    "audit_write",
];

#[allow(clippy::too_many_arguments)]
fn spawn(
    tools: &Tools,
    net: &PodNet,
    pod_spec: &Value,
    container: &Value,
    volumes: &HashMap<String, PathBuf>,
    downward: &Downward,
    ctx: &PodContext<'_>,
    log: &Path,
) -> anyhow::Result<ChildGuard> {
    let name = str_field(container, "name")?;
    let image_name = str_field(container, "image")?;
    let image = ctx
        .images
        .get(image_name)
        .ok_or_else(|| anyhow!("container {name}: image {image_name} is not known to the test"))?;

    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), image.path_env.clone()),
        ("HOSTNAME".into(), ctx.name.clone()),
    ];
    for var in array(container, "env") {
        let key = str_field(var, "name")?.to_owned();
        let value = if let Some(v) = var.get("value").and_then(Value::as_str) {
            expand(v, &env)
        } else if let Some(path) = var
            .pointer("/valueFrom/fieldRef/fieldPath")
            .and_then(Value::as_str)
        {
            downward.field(path)?.to_owned()
        } else if var.get("valueFrom").is_some() {
            bail!("container {name}: env {key}: only fieldRef is supported");
        } else {
            String::new()
        };
        env.push((key, value));
    }
    let mut argv: Vec<String> = array(container, "command")
        .filter_map(Value::as_str)
        .map(|a| expand(a, &env))
        .collect();
    if argv.is_empty() {
        bail!("container {name}: no command (the test images have no entrypoint)");
    }
    argv.extend(
        array(container, "args")
            .filter_map(Value::as_str)
            .map(|a| expand(a, &env)),
    );

    // The container's securityContext over the pod's, field by field.
    let pod_sc = pod_spec.get("securityContext");
    let sc = container.get("securityContext");
    let pick = |field: &str| {
        sc.and_then(|s| s.get(field))
            .or_else(|| pod_sc.and_then(|s| s.get(field)))
    };
    let uid = pick("runAsUser")
        .and_then(Value::as_u64)
        .map(|u| u as u32)
        .or(image.user.map(|u| u.0))
        .unwrap_or(0);
    let gid = pick("runAsGroup")
        .and_then(Value::as_u64)
        .map(|g| g as u32)
        .or(image.user.map(|u| u.1))
        .unwrap_or(0);
    if pick("runAsNonRoot").and_then(Value::as_bool) == Some(true) && uid == 0 {
        bail!("container {name}: runAsNonRoot but it would run as root (the kubelet refuses)");
    }
    let caps = sc.and_then(|s| s.get("capabilities"));
    let list = |field: &str| -> Vec<String> {
        caps.and_then(|c| c.get(field))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(|c| c.to_ascii_lowercase())
                    .collect()
            })
            .unwrap_or_default()
    };
    let (drop, add) = (list("drop"), list("add"));
    let mut bounding: Vec<String> = if drop.iter().any(|d| d == "all") {
        Vec::new()
    } else {
        DEFAULT_CAPS
            .iter()
            .map(|c| (*c).to_owned())
            .filter(|c| !drop.contains(c))
            .collect()
    };
    bounding.extend(add);
    let bounding_arg = std::iter::once("-all".to_owned())
        .chain(bounding.iter().map(|c| format!("+{c}")))
        .collect::<Vec<_>>()
        .join(",");
    // Kubernetes sets no_new_privs unless allowPrivilegeEscalation is true (or the
    // container is privileged / has CAP_SYS_ADMIN).
    let no_new_privs = sc
        .and_then(|s| s.get("allowPrivilegeEscalation"))
        .and_then(Value::as_bool)
        == Some(false);
    let read_only_root = sc
        .and_then(|s| s.get("readOnlyRootFilesystem"))
        .and_then(Value::as_bool)
        == Some(true);

    let mut script = String::from("set -e\n");
    script.push_str("mount -t tmpfs -o mode=0755 weir-pod-run /run\n");
    script.push_str(&format!(
        "mount --bind {} /usr/local/bin\n",
        shell_quote(&image.dir.display().to_string())
    ));
    let mut mounts: Vec<(&str, &Path, bool)> = Vec::new();
    for m in array(container, "volumeMounts") {
        let volume = str_field(m, "name")?;
        let path = str_field(m, "mountPath")?;
        let src = volumes
            .get(volume)
            .ok_or_else(|| anyhow!("container {name}: volumeMount of unknown volume {volume}"))?;
        let under_run = path == "/run"
            || path.starts_with("/run/")
            || path == "/var/run"
            || path.starts_with("/var/run/");
        if !under_run && !Path::new(path).is_dir() {
            bail!("container {name}: mountPath {path} must be under /run or exist on this machine");
        }
        let read_only = m.get("readOnly").and_then(Value::as_bool) == Some(true);
        mounts.push((path, src, read_only));
    }
    mounts.sort_by_key(|(path, _, _)| path.len());
    for (path, src, read_only) in mounts {
        let path = shell_quote(path);
        script.push_str(&format!(
            "mkdir -p {path}\nmount --bind {} {path}\n",
            shell_quote(&src.display().to_string())
        ));
        if read_only {
            script.push_str(&format!("mount -o remount,bind,ro {path}\n"));
        }
    }
    // The test's own files (volume sources included, already bound) vanish from the
    // container's view, as the host's /tmp would.
    script.push_str("mount -t tmpfs -o mode=1777 weir-pod-tmp /tmp\n");
    if read_only_root {
        script.push_str("mount -o remount,bind,ro /\n");
    }
    if let Some(dir) = container.get("workingDir").and_then(Value::as_str) {
        script.push_str(&format!("cd {}\n", shell_quote(dir)));
    } else {
        script.push_str("cd /\n");
    }
    // setpriv drops to the container's uid and capabilities, then `env -i` gives the
    // command exactly the container's environment (its PATH finds the image's files).
    script.push_str(&format!(
        "exec {} --reuid={uid} --regid={gid} --clear-groups {}--inh-caps=-all --bounding-set={bounding_arg} -- {} -i",
        shell_quote(&tools.setpriv.display().to_string()),
        if no_new_privs { "--no-new-privs " } else { "" },
        shell_quote(&tools.env.display().to_string()),
    ));
    for (key, value) in &env {
        script.push(' ');
        script.push_str(&shell_quote(&format!("{key}={value}")));
    }
    for arg in &argv {
        script.push(' ');
        script.push_str(&shell_quote(arg));
    }
    script.push('\n');

    // `ip netns exec`, `unshare` and `sh` exec in place: the child's pid is the container's.
    let mut cmd = Command::new(&tools.ip);
    cmd.args(["netns", "exec", net.ns.name()])
        .arg(&tools.unshare)
        .args(["--mount", "--propagation", "private"])
        .arg(&tools.sh)
        .args(["-c", &script])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    ChildGuard::spawn(&format!("{}/{name}", ctx.name), &mut cmd, Some(log), false)
        .with_context(|| format!("starting container {name}"))
}

/// Polls `container`'s probe `kind` (if it has one) until it succeeds. The test polls more
/// often than the kubelet, to finish fast, but gives up when the kubelet would:
/// `initialDelaySeconds + periodSeconds × failureThreshold`.
async fn await_probe(
    container: &Container,
    kind: &str,
    pod_ip: Ipv4Addr,
    node_net: &Net,
) -> anyhow::Result<()> {
    let Some(probe) = container.spec.get(kind) else {
        return Ok(());
    };
    let secs =
        |field: &str, default: u64| probe.get(field).and_then(Value::as_u64).unwrap_or(default);
    let budget = Duration::from_secs(
        secs("initialDelaySeconds", 0) + secs("periodSeconds", 10) * secs("failureThreshold", 3),
    )
    .max(Duration::from_secs(10));
    let deadline = Instant::now() + budget;
    let mut last;
    loop {
        match probe_once(container, probe, pod_ip, node_net).await {
            Ok(()) => return Ok(()),
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() >= deadline {
            bail!(
                "{kind} of {} did not pass within {budget:?}: {last}; log:\n{}",
                container.name,
                container.child.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn probe_once(
    container: &Container,
    probe: &Value,
    pod_ip: Ipv4Addr,
    node_net: &Net,
) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(
        probe
            .get("timeoutSeconds")
            .and_then(Value::as_u64)
            .unwrap_or(1),
    );
    if let Some(get) = probe.get("httpGet") {
        if get.get("scheme").and_then(Value::as_str).unwrap_or("HTTP") != "HTTP" {
            bail!("httpGet scheme other than HTTP is not supported");
        }
        let port = resolve_port(&container.spec, get.get("port"))?;
        let path = get.get("path").and_then(Value::as_str).unwrap_or("/");
        let addr = SocketAddr::from((pod_ip, port));
        let response = tokio::time::timeout(timeout, async {
            let mut stream = node_net.connect(addr).await?;
            // What the kubelet sends.
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n\r\n"
            );
            crate::raw_http::roundtrip(&mut stream, request.as_bytes()).await
        })
        .await
        .map_err(|_| anyhow!("GET {addr}{path} timed out"))??;
        if !(200..400).contains(&response.status) {
            bail!("GET {addr}{path}: {}", response.status);
        }
        Ok(())
    } else if let Some(tcp) = probe.get("tcpSocket") {
        let port = resolve_port(&container.spec, tcp.get("port"))?;
        tokio::time::timeout(timeout, node_net.connect(SocketAddr::from((pod_ip, port))))
            .await
            .map_err(|_| anyhow!("connect timed out"))??;
        Ok(())
    } else {
        bail!("only httpGet and tcpSocket probes are supported by the test kubelet")
    }
}

/// A probe's port: a number, or a name from the container's `ports`.
fn resolve_port(container: &Value, port: Option<&Value>) -> anyhow::Result<u16> {
    match port {
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .context("probe port out of range"),
        Some(Value::String(name)) => array(container, "ports")
            .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
            .and_then(|p| p.get("containerPort"))
            .and_then(Value::as_u64)
            .and_then(|n| u16::try_from(n).ok())
            .with_context(|| format!("probe port {name} is not a named container port")),
        _ => bail!("probe without a port"),
    }
}

fn array<'a>(value: &'a Value, field: &str) -> impl Iterator<Item = &'a Value> {
    value
        .get(field)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

fn str_field<'a>(value: &'a Value, field: &str) -> anyhow::Result<&'a str> {
    value
        .get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("missing {field} in {value}"))
}

#[cfg(test)]
mod tests {
    use super::expand;

    #[test]
    fn expands_like_kubernetes() {
        let env = vec![("POD_IP".to_owned(), "10.1.2.3".to_owned())];
        assert_eq!(expand("$(POD_IP):4143", &env), "10.1.2.3:4143");
        assert_eq!(expand("$$(POD_IP)", &env), "$(POD_IP)");
        assert_eq!(expand("$(NOPE)x", &env), "$(NOPE)x");
        assert_eq!(expand("a$b", &env), "a$b");
    }
}
