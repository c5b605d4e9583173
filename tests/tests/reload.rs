//! SIGHUP re-reads the config files: a good file is applied (new version, new
//! endpoints), a bad one is rejected and the last good config keeps serving.

use std::time::Duration;

use weir_tests::apps;
use weir_tests::client;
use weir_tests::config;
use weir_tests::proxy::Proxy;
use weir_tests::util::{TestDir, wait_until, within};

const RELOAD_TIMEOUT: Duration = Duration::from_secs(15);

async fn answering_app(out: &Proxy) -> String {
    let reply = within(Duration::from_secs(30), "GET /echo", async {
        client::get_json(out.outbound(), "echo", "/echo").await
    })
    .await;
    reply["app"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_endpoints_and_keeps_last_good_config() {
    let app1 = apps::http::start("app1").await;
    let app2 = apps::http::start("app2").await;
    let dir = TestDir::new("reload").expect("temp dir");
    let mesh = dir.join("mesh.yaml");
    std::fs::write(&mesh, config::MESH_PERMISSIVE).expect("write mesh config");
    let in1 = Proxy::builder("inbound-1", dir.path())
        .service("echo")
        .app_addr(app1.addr)
        .config(&mesh)
        .start()
        .await;
    let in2 = Proxy::builder("inbound-2", dir.path())
        .service("echo")
        .app_addr(app2.addr)
        .config(&mesh)
        .start()
        .await;
    let out_config = dir.join("outbound.yaml");
    std::fs::write(&out_config, config::mesh_with_echo(&[in1.inbound()])).expect("write config");
    let mut out = Proxy::builder("outbound", dir.path())
        .service("client")
        .config(&out_config)
        .start()
        .await;

    assert_eq!(answering_app(&out).await, "app1");
    let v0 = out.config_version().await;

    // A good reload moves `echo` to the second inbound proxy.
    config::write_atomic(&out_config, &config::mesh_with_echo(&[in2.inbound()]))
        .expect("rewrite config");
    out.signal(libc::SIGHUP);
    let out_ref = &out;
    wait_until(
        "/config version increases after SIGHUP",
        RELOAD_TIMEOUT,
        || async move { out_ref.config_version().await > v0 },
    )
    .await;
    let v1 = out.config_version().await;
    for _ in 0..3 {
        assert_eq!(
            answering_app(&out).await,
            "app2",
            "reload must switch endpoints"
        );
    }
    assert!(
        out.metric("weir_config_reloads_total", &[("result", "ok")])
            .await
            >= 1.0
    );

    // Bad files: unparsable YAML, then valid YAML with an impossible address.
    let broken = [
        "apiVersion: weir/v1\nkind: Endpoints\nmetadata: { name: echo\n  spec: [oops\n".to_string(),
        config::documents(&[
            config::MESH_PERMISSIVE,
            "apiVersion: weir/v1\nkind: Endpoints\nmetadata: { name: echo, namespace: default }\n\
             spec: { addresses: [\"127.0.0.1:99999\"] }\n",
        ]),
    ];
    for (i, contents) in broken.iter().enumerate() {
        let errors_before = out
            .metric("weir_config_reloads_total", &[("result", "error")])
            .await;
        config::write_atomic(&out_config, contents).expect("write broken config");
        out.signal(libc::SIGHUP);
        let out_ref = &out;
        wait_until(
            &format!("reload error counted for broken file #{i}"),
            RELOAD_TIMEOUT,
            || async move {
                out_ref
                    .metric("weir_config_reloads_total", &[("result", "error")])
                    .await
                    > errors_before
            },
        )
        .await;
        assert_eq!(
            out.config_version().await,
            v1,
            "a rejected file (#{i}) must not change the config version"
        );
        assert_eq!(
            answering_app(&out).await,
            "app2",
            "the last good config must keep serving after broken file #{i}"
        );
    }
    assert_eq!(
        app1.stats.requests(),
        1,
        "nothing may go to the old endpoint"
    );
}
