//! The in-process test apps as a standalone binary, for tests that must run an
//! app inside a network namespace (`ip netns exec NS weir-testapp ...`), and the demo's
//! shop services and load loop.
//! Servers print `listening ADDR` on stdout once bound, then serve until killed.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use weir_tests::apps::shop;
use weir_tests::loadgen;

#[derive(Parser)]
#[command(about = "Weir end-to-end test apps")]
struct Cli {
    #[command(subcommand)]
    app: App,
}

#[derive(Subcommand)]
enum App {
    /// HTTP/1.1 + h2c app: /echo /bytes /upload /delay /ws.
    Http {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value = "testapp")]
        name: String,
    },
    /// Raw TCP echo.
    TcpEcho {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// gRPC weir.testing.v1.EchoService.
    Grpc {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// A shop service of the demo: per request, calls its downstreams through its sidecar.
    Shop {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        name: String,
        /// The sidecar's outbound listener the calls go through.
        #[arg(long)]
        proxy: Option<SocketAddr>,
        /// Stages separated by ',', parallel calls by '+': `auth,catalog+payment,shipping`.
        #[arg(long, default_value = "")]
        calls: String,
        /// Own work per request, in milliseconds.
        #[arg(long, default_value_t = 2)]
        work_ms: u64,
    },
    /// A bounded load loop; prints a summary (and KEY=value lines to --env-file).
    Load {
        /// Where requests go: the edge proxy's outbound listener.
        #[arg(long)]
        target: SocketAddr,
        /// The Host header: the service to call.
        #[arg(long)]
        host: String,
        #[arg(long, default_value = "/")]
        path: String,
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        requests: u32,
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000))]
        concurrency: u32,
        /// Per-request limit in milliseconds.
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
        /// Also count what each service of the waterfall answered.
        #[arg(long)]
        by_service: bool,
        #[arg(long)]
        env_file: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().app {
        App::Load {
            target,
            host,
            path,
            requests,
            concurrency,
            timeout_ms,
            by_service,
            env_file,
        } => {
            let plan = loadgen::Plan {
                target,
                host,
                path,
                requests,
                concurrency,
                timeout: Duration::from_millis(timeout_ms),
            };
            let summary = loadgen::summarize(&loadgen::run(&plan).await);
            print!("{}", summary.text(by_service));
            if let Some(file) = env_file {
                std::fs::write(&file, summary.env())
                    .with_context(|| format!("writing {}", file.display()))?;
            }
            Ok(())
        }
        App::Http { listen, name } => {
            let listener = bind(listen).await?;
            let server = weir_tests::apps::http::serve(listener, &name);
            serve_forever(&server.addr).await
        }
        App::TcpEcho { listen } => {
            let listener = bind(listen).await?;
            let addr = listener.local_addr()?;
            let _server = weir_tests::apps::tcp::serve(listener);
            serve_forever(&addr).await
        }
        App::Grpc { listen } => {
            let listener = bind(listen).await?;
            let server = weir_tests::apps::grpc::serve(listener);
            serve_forever(&server.addr).await
        }
        App::Shop {
            listen,
            name,
            proxy,
            calls,
            work_ms,
        } => {
            let stages = shop::parse_calls(&calls).map_err(anyhow::Error::msg)?;
            let listener = bind(listen).await?;
            let shop = shop::Shop {
                name,
                proxy,
                stages,
                work: Duration::from_millis(work_ms),
            };
            let server = shop::serve(listener, shop);
            serve_forever(&server.addr).await
        }
    }
}

async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))
}

/// The caller holds its server guard across this: dropping one stops its server.
async fn serve_forever(addr: &SocketAddr) -> anyhow::Result<()> {
    // Tests wait for this line instead of sleeping.
    println!("listening {addr}");
    std::io::stdout().flush()?;
    std::future::pending::<()>().await;
    Ok(())
}
