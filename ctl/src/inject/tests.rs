//! inject/uninject on the fixtures in tests/fixtures/inject: realistic manifests with init
//! containers, probes, named ports, several containers, Lists and kinds that pass through.

use std::path::PathBuf;

use serde_norway::Value;

use super::*;

const INJECT: Mode = Mode::Inject { legacy: false };
const LEGACY: Mode = Mode::Inject { legacy: true };

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inject")
}

fn fixture(name: &str) -> String {
    let path = fixtures().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

fn all_fixtures() -> Vec<(String, String)> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures())
        .expect("fixtures folder")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    names.sort();
    assert!(names.len() >= 10, "fixtures: {names:?}");
    names
        .into_iter()
        .map(|n| (fixture(&n), n))
        .map(|(t, n)| (n, t))
        .collect()
}

fn rewrite(text: &str, mode: Mode) -> String {
    match rewrite_text("test.yaml", text, mode) {
        Ok(out) => out.yaml,
        Err(errors) => panic!("{}", InjectErrors(errors)),
    }
}

fn docs(text: &str) -> Vec<Value> {
    load_all(text).expect("valid YAML")
}

/// The pod template of a document (a Pod is its own template).
fn template(doc: &Value) -> &Value {
    let kind = doc["kind"].as_str().unwrap_or_default();
    match kind {
        "Pod" => doc,
        "CronJob" => &doc["spec"]["jobTemplate"]["spec"]["template"],
        _ => &doc["spec"]["template"],
    }
}

fn names(list: &Value) -> Vec<&str> {
    list.as_sequence()
        .map(|items| items.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default()
}

fn env<'a>(proxy: &'a Value, name: &str) -> Option<&'a str> {
    proxy["env"]
        .as_sequence()?
        .iter()
        .find(|v| v["name"].as_str() == Some(name))
        .and_then(|v| v["value"].as_str())
}

fn proxy_of(pod: &Value) -> &Value {
    pod["spec"]["initContainers"]
        .as_sequence()
        .and_then(|list| list.iter().find(|c| c["name"] == "weir-proxy"))
        .expect("weir-proxy in initContainers")
}

fn init_args(pod: &Value) -> Vec<&str> {
    let init = &pod["spec"]["initContainers"][0];
    assert_eq!(init["name"], Value::from("weir-init"));
    init["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

#[test]
fn inject_is_idempotent_and_uninject_restores_the_input() {
    for (name, text) in all_fixtures() {
        for mode in [INJECT, LEGACY] {
            let once = rewrite(&text, mode);
            assert_eq!(rewrite(&once, mode), once, "{name} {mode:?}: inject twice");
            let back = rewrite(&once, Mode::Uninject);
            assert_eq!(docs(&back), docs(&text), "{name} {mode:?}: uninject");
            // Same key order too: the restored text is the input's, re-emitted.
            assert_eq!(back, emit_all(&docs(&text)), "{name} {mode:?}: order");
        }
        // Switching sidecar forms goes through the original.
        let native = rewrite(&text, INJECT);
        let legacy = rewrite(&text, LEGACY);
        assert_eq!(rewrite(&native, LEGACY), legacy, "{name}");
        assert_eq!(rewrite(&legacy, INJECT), native, "{name}");
    }
}

#[test]
fn app_containers_and_own_init_containers_are_unchanged() {
    let mut injected_pods = 0;
    for (name, text) in all_fixtures() {
        let before = docs(&text);
        for (mode, legacy) in [(INJECT, false), (LEGACY, true)] {
            let after = docs(&rewrite(&text, mode));
            assert_eq!(before.len(), after.len(), "{name}");
            for (old, new) in before.iter().zip(&after) {
                let pairs: Vec<(&Value, &Value)> = if old["kind"] == "List" {
                    let items =
                        |d: &'_ Value| d["items"].as_sequence().cloned().unwrap_or_default();
                    assert_eq!(items(old).len(), items(new).len());
                    old["items"]
                        .as_sequence()
                        .into_iter()
                        .flatten()
                        .zip(new["items"].as_sequence().into_iter().flatten())
                        .collect()
                } else {
                    vec![(old, new)]
                };
                for (old, new) in pairs {
                    let (old_pod, new_pod) = (template(old), template(new));
                    if old_pod == new_pod {
                        continue;
                    }
                    injected_pods += 1;
                    let mut apps = new_pod["spec"]["containers"].clone();
                    let own_init = new_pod["spec"]["initContainers"]
                        .as_sequence()
                        .expect("init containers")
                        .clone();
                    if legacy {
                        let list = apps.as_sequence_mut().expect("containers");
                        assert_eq!(list[0]["name"], Value::from("weir-proxy"), "{name}");
                        assert!(list[0].get("restartPolicy").is_none());
                        list.remove(0);
                        assert_eq!(names(&Value::Sequence(own_init.clone()))[0], "weir-init");
                    } else {
                        let first: Vec<_> = own_init.iter().take(2).map(|c| &c["name"]).collect();
                        assert_eq!(
                            first,
                            [&Value::from("weir-init"), &Value::from("weir-proxy")]
                        );
                        assert_eq!(own_init[1]["restartPolicy"], Value::from("Always"));
                    }
                    assert_eq!(
                        apps, old_pod["spec"]["containers"],
                        "{name}: app containers"
                    );
                    let skip = if legacy { 1 } else { 2 };
                    let expected = old_pod["spec"]
                        .get("initContainers")
                        .and_then(Value::as_sequence)
                        .cloned()
                        .unwrap_or_default();
                    assert_eq!(
                        own_init[skip..],
                        expected[..],
                        "{name}: own init containers"
                    );
                    assert_eq!(
                        new_pod["metadata"]["annotations"]["weir.dev/injected"],
                        Value::from(containers::VERSION)
                    );
                    assert_eq!(
                        new_pod["metadata"]["labels"]["weir.dev/proxy-version"],
                        Value::from(containers::VERSION)
                    );
                    let volumes = names(&new_pod["spec"]["volumes"]);
                    assert_eq!(volumes[volumes.len() - 4..], containers::VOLUMES);
                }
            }
        }
    }
    // deployment, statefulset, cronjob, daemonset, job, pod, list item, skip-ports; twice.
    assert_eq!(injected_pods, 16);
}

#[test]
fn init_args_follow_ports_and_annotations() {
    let defaults = [
        "--proxy-uid",
        "2102",
        "--inbound-port",
        "4143",
        "--outbound-port",
        "4140",
        "--skip-inbound-ports",
        "4191",
        "--skip-outbound-ports",
        "8090",
    ];
    let out = docs(&rewrite(&fixture("deployment-multi.yaml"), INJECT));
    assert_eq!(init_args(template(&out[0])), defaults);
    let out = docs(&rewrite(&fixture("skip-ports.yaml"), INJECT));
    assert_eq!(
        init_args(template(&out[0])),
        [
            "--proxy-uid",
            "2102",
            "--inbound-port",
            "4143",
            "--outbound-port",
            "4140",
            "--skip-inbound-ports",
            "4191,9443,9090",
            "--skip-outbound-ports",
            "8090,5432,6379",
            "--outbound-ports",
            "80,443,5432,6379",
        ]
    );
    let out = docs(&rewrite(&fixture("daemonset.yaml"), INJECT));
    let args = init_args(template(&out[0]));
    assert_eq!(args[9], "8090,24224");
}

#[test]
fn proxy_env_follows_the_pod() {
    let case = |file: &str, index: Option<usize>| {
        let out = docs(&rewrite(&fixture(file), INJECT));
        let doc = match index {
            Some(i) => out[0]["items"][i].clone(),
            None => out[0].clone(),
        };
        proxy_of(template(&doc)).clone()
    };
    let proxy = case("deployment-multi.yaml", None);
    assert_eq!(env(&proxy, "WEIR_SERVICE"), Some("storefront"));
    assert_eq!(env(&proxy, "WEIR_DRAIN_TIMEOUT"), Some("40s"));
    // Startup, readiness, liveness order: /healthz by name (and again by number as the
    // liveness probe), /ready by name; the tcpSocket probe needs nothing.
    assert_eq!(
        env(&proxy, "WEIR_PROBE_PATHS"),
        Some("8080/healthz,8080/ready")
    );
    let proxy = case("daemonset.yaml", None);
    assert_eq!(
        env(&proxy, "WEIR_PROBE_PATHS"),
        Some("2020/api/v1/health,2020/")
    );
    assert_eq!(env(&proxy, "WEIR_SERVICE"), Some("log-agent"));
    let proxy = case("statefulset.yaml", None);
    assert_eq!(env(&proxy, "WEIR_PROBE_PATHS"), None);
    assert_eq!(env(&proxy, "WEIR_SERVICE"), Some("orders-db"));
    assert_eq!(env(&proxy, "WEIR_DRAIN_TIMEOUT"), Some("25s"));
    let proxy = case("cronjob.yaml", None);
    assert_eq!(env(&proxy, "WEIR_SERVICE"), Some("reports"));
    let proxy = case("pod.yaml", None);
    assert_eq!(env(&proxy, "WEIR_SERVICE"), Some("debug-shell"));
    let proxy = case("list.yaml", Some(0));
    assert_eq!(env(&proxy, "WEIR_PROBE_PATHS"), Some("8080/ready"));
    // HTTPS and gRPC probes are skipped ports here, so only the plain one is listed.
    let proxy = case("skip-ports.yaml", None);
    assert_eq!(env(&proxy, "WEIR_PROBE_PATHS"), Some("8080/started"));
    let out = docs(&rewrite(&fixture("job.yaml"), INJECT));
    let pod = template(&out[0]);
    assert_eq!(env(proxy_of(pod), "WEIR_DRAIN_TIMEOUT"), Some("1s"));
    assert_eq!(
        proxy_of(pod)["image"],
        Value::from("registry.example.com/mirror/weir:0.1.0")
    );
    assert_eq!(
        pod["spec"]["initContainers"][0]["image"],
        Value::from("registry.example.com/mirror/weir-init:0.1.0")
    );
}

#[test]
fn other_kinds_and_opted_out_workloads_pass_through() {
    for file in ["passthrough.yaml", "opted-out.yaml"] {
        let text = fixture(file);
        assert_eq!(docs(&rewrite(&text, INJECT)), docs(&text), "{file}");
    }
    let text = fixture("list.yaml");
    let (before, after) = (docs(&text), docs(&rewrite(&text, INJECT)));
    assert_eq!(after[0]["items"][1], before[0]["items"][1], "the Service");
    assert_ne!(
        after[0]["items"][0], before[0]["items"][0],
        "the Deployment"
    );
    // YAML 1.1 values survive: octal modes stay numbers, quoted "on"/"yes" stay strings.
    let out = rewrite(&fixture("deployment-multi.yaml"), INJECT);
    assert!(out.contains("defaultMode: 420\n"), "{out}");
    assert!(out.contains("value: \"yes\"\n"), "{out}");
    let out = rewrite(&fixture("passthrough.yaml"), INJECT);
    assert!(out.contains("enabled: \"on\"\n"), "{out}");
}

#[test]
fn problems_warn_or_leave_the_pod_alone() {
    let host = "apiVersion: v1\nkind: Pod\nmetadata: {name: node-agent}\nspec:\n  hostNetwork: true\n  containers: [{name: a, image: a}]\n";
    let out = rewrite_text("host.yaml", host, INJECT).expect("valid");
    assert_eq!(docs(&out.yaml), docs(host));
    assert!(
        out.warnings[0].contains("hostNetwork"),
        "{:?}",
        out.warnings
    );
    let grpc =
        fixture("skip-ports.yaml").replace("weir.dev/skip-inbound-ports: \"9443, 9090\"", "x: y");
    let out = rewrite_text("grpc.yaml", &grpc, INJECT).expect("valid");
    assert_eq!(out.warnings.len(), 2, "{:?}", out.warnings);
    assert!(
        out.warnings
            .iter()
            .any(|w| w.contains("gRPC probe on port 9090"))
    );
    let out = rewrite_text("job.yaml", &fixture("job.yaml"), LEGACY).expect("valid");
    assert!(
        out.warnings[0].contains("does not complete"),
        "{:?}",
        out.warnings
    );
}

#[test]
fn bad_input_names_file_document_and_field() {
    let bad = fixtures().join("../inject-bad");
    let err = |file: &str| {
        let text = std::fs::read_to_string(bad.join(file)).expect("fixture");
        let errors = rewrite_text(file, &text, INJECT).expect_err("invalid");
        InjectErrors(errors).to_string()
    };
    assert_eq!(
        err("no-template.yaml"),
        "no-template.yaml: document 2 (Deployment shop/broken): spec.template: missing (a pod template is required)"
    );
    assert!(
        err("unnamed-port.yaml").starts_with(
            "unnamed-port.yaml: document 1 (Pod shop/probe): spec.containers[0].livenessProbe.httpGet.port: named port \"http\""
        ),
        "{}",
        err("unnamed-port.yaml")
    );
    assert!(
        err("not-yaml.yaml").starts_with("not-yaml.yaml: document 1: invalid YAML at line 4"),
        "{}",
        err("not-yaml.yaml")
    );
    // Every problem is reported, each at its own document and list item.
    let text = format!(
        "{}---\napiVersion: v1\nkind: List\nitems:\n- {{apiVersion: apps/v1, kind: Deployment, metadata: {{name: d}}, spec: {{template: {{spec: {{}}}}}}}}\n",
        fixture("opted-out.yaml").replace("disabled", "maybe")
    );
    let errors = rewrite_text("many.yaml", &text, INJECT).expect_err("invalid");
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].contains("document 1 (Deployment shop/legacy-batch): metadata.annotations[\"weir.dev/inject\"]: expected enabled or disabled"), "{lines:?}");
    assert!(lines[1].contains("document 2 (Deployment d): items[0].spec.template.spec.containers: expected a non-empty list"), "{lines:?}");
    // Reserved names are refused rather than overwritten.
    let clash = fixture("pod.yaml").replace("name: shell", "name: weir-proxy");
    let errors = rewrite_text("clash.yaml", &clash, INJECT).expect_err("reserved");
    assert!(
        errors[0]
            .to_string()
            .contains("spec.containers[0].name: the name \"weir-proxy\" is reserved")
    );
    let clash =
        fixture("pod.yaml").replace("tty: true", "tty: true\n    ports: [{containerPort: 4191}]");
    let errors = rewrite_text("clash.yaml", &clash, INJECT).expect_err("port");
    assert!(errors[0].to_string().contains(
        "spec.containers[0].ports[0].containerPort: port 4191 is the proxy's admin port"
    ));
    assert!(rewrite_text("empty.yaml", "", INJECT).is_err());
}
