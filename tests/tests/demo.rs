//! README command 1, `./demo.sh`, run as a newcomer would run it (on the binaries this test
//! run built): it must exit 0 within its time budget, tell the whole story, end with the one
//! summary line, leave no process behind, and the waterfall it prints must come from the
//! spans its own sidecars wrote — which `weirctl trace --file` then reads again here.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use weir_tests::bins;
use weir_tests::util::TestDir;

/// The demo promises 2 minutes after the build; a loaded CI machine gets some slack.
const BUDGET: Duration = Duration::from_secs(240);

#[test]
fn the_demo_tells_the_waterfall_story_and_cleans_up() {
    let dir = TestDir::new("demo").expect("dir");
    let bin_dir = dir.join("bin");
    std::fs::create_dir_all(&bin_dir).expect("bin dir");
    for bin in [
        bins::proxy_bin(),
        bins::control_bin(),
        bins::weirctl_bin(),
        bins::testapp_bin(),
    ] {
        let name = bin.file_name().expect("binary name");
        std::os::unix::fs::symlink(&bin, bin_dir.join(name)).expect("symlink");
    }
    let traces = dir.join("traces");
    std::fs::create_dir_all(&traces).expect("traces dir");
    // Below the ephemeral range, so other tests' port-0 binds cannot take the demo's ports.
    let base = 20_000 + (std::process::id() % 800) as u16 * 10;
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../demo.sh");

    let start = Instant::now();
    let out = Command::new("timeout")
        .arg(BUDGET.as_secs().to_string())
        .arg(&demo)
        .env("WEIR_DEMO_BIN_DIR", &bin_dir)
        .env("WEIR_DEMO_PORT_BASE", base.to_string())
        .env("WEIR_DEMO_SAVE_TRACES", &traces)
        .env("TMPDIR", dir.path())
        .env_remove("WEIR_JAEGER_URL")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .output()
        .expect("running demo.sh");
    let took = start.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo.sh failed ({}) after {took:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    eprintln!("demo.sh took {took:?}");

    // The last line, exactly.
    let last = stdout.lines().last().unwrap_or_default();
    let fields: Vec<&str> = last.split(' ').collect();
    assert!(
        matches!(
            fields[..],
            ["demo:", "8", "services,", _, "requests,", _, "failed,", "trace", id]
                if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
        ),
        "last line: {last:?}"
    );
    let requests: usize = fields[3].parse().expect("requests");
    let failed: usize = fields[5].parse().expect("failed");
    let slowest = fields[8];
    assert!(requests >= 1000, "{last}");
    // Steps 4 and 5 fail requests on purpose; most of the rest must succeed.
    assert!(failed > 0 && failed * 4 < requests, "{last}");

    // Every step ran, with its evidence.
    for heading in [
        "1. Steady traffic",
        "2. One request, hop by hop",
        "3. payment fails 30 %",
        "4. payment becomes slow",
        "5. One payment replica breaks",
        "6. Roll back",
        "The slowest request of the demo",
    ] {
        assert!(stdout.contains(heading), "no step {heading:?}:\n{stdout}");
    }
    assert!(stdout.contains("10 of 10 proxies connected"), "{stdout}");
    assert!(
        stdout.contains("300 requests: 300 ok"),
        "steady traffic failed:\n{stdout}"
    );
    assert!(
        stdout.contains("bank was called 0 times"),
        "deadline did not travel:\n{stdout}"
    );
    assert!(
        stdout.contains("ejected payment-b 1 time"),
        "breaker:\n{stdout}"
    );
    assert!(stdout.contains("bulkhead-full"), "bulkhead:\n{stdout}");
    assert!(
        stdout.contains("▶"),
        "no critical path in the waterfalls:\n{stdout}"
    );
    let after_retries = stdout
        .split("weirctl apply -f payment.yaml")
        .nth(1)
        .and_then(|rest| rest.lines().find(|l| l.contains("requests:")))
        .unwrap_or_default();
    let ok_pct: f64 = after_retries
        .split('(')
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0);
    assert!(
        ok_pct >= 95.0,
        "retries did not absorb the faults: {after_retries:?}"
    );

    // Nothing is left listening on the demo's ports.
    for port in (base..base + 110).step_by(10) {
        for offset in 0..4 {
            let addr = SocketAddr::from(([127, 0, 0, 1], port + offset));
            assert!(
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err(),
                "something still listens on {addr} after the demo"
            );
        }
    }

    // The spans the demo's sidecars wrote, read back: the slowest trace is whole.
    let trace = weirctl_json(&traces, &[slowest]);
    let spans = trace["spans"].as_array().expect("spans");
    let orphans: Vec<&Value> = spans.iter().filter(|s| s["orphan"] == true).collect();
    // The root is the edge's span (nothing called the edge through the mesh).
    assert_eq!(orphans.len(), 0, "spans without their parent: {orphans:?}");
    let services: std::collections::BTreeSet<&str> =
        spans.iter().filter_map(|s| s["service"].as_str()).collect();
    for service in [
        "edge",
        "gateway",
        "checkout",
        "auth",
        "catalog",
        "inventory",
        "payment",
        "bank",
        "shipping",
    ] {
        assert!(
            services.contains(service),
            "no span of {service} in {services:?}"
        );
    }
    let slowest_ms = trace["duration_us"].as_u64().unwrap_or(0) / 1000;
    assert!(
        slowest_ms >= 900,
        "the slowest trace should be one of step 4's 1 s waits, took {slowest_ms} ms"
    );
    // The demo ranks requests by the time its load generator saw; `--slowest` ranks traces by
    // the edge span's duration. Step 4 makes many requests wait ~1 s, so the two may pick
    // different near-ties: they must agree on the duration, not necessarily on the id.
    let listed = weirctl_json(&traces, &["--slowest"]);
    let listed_ms = listed["duration_us"].as_u64().unwrap_or(0) / 1000;
    assert!(
        listed_ms >= slowest_ms && listed_ms - slowest_ms <= 100,
        "--slowest found {} ({listed_ms} ms), the demo {slowest} ({slowest_ms} ms)",
        listed["trace_id"]
    );
}

fn weirctl_json(traces: &Path, args: &[&str]) -> Value {
    let out = Command::new(bins::weirctl_bin())
        .arg("trace")
        .arg("--file")
        .arg(traces)
        .args(args)
        .args(["-o", "json"])
        .output()
        .expect("weirctl trace");
    assert!(
        out.status.success(),
        "weirctl trace --file {} {args:?}: {}",
        traces.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("weirctl trace -o json")
}
