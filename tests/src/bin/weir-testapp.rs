//! The in-process test apps as a standalone binary, for tests that must run an
//! app inside a network namespace (`ip netns exec NS weir-testapp ...`).
//! Prints `listening ADDR` on stdout once bound, then serves until killed.

use std::io::Write;
use std::net::SocketAddr;

use clap::{Parser, Subcommand};

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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let listen = match &cli.app {
        App::Http { listen, .. } | App::TcpEcho { listen } | App::Grpc { listen } => *listen,
    };
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    // The guards must stay alive: dropping one stops its server.
    let _http;
    let _tcp;
    let _grpc;
    match cli.app {
        App::Http { name, .. } => _http = weir_tests::apps::http::serve(listener, &name),
        App::TcpEcho { .. } => _tcp = weir_tests::apps::tcp::serve(listener),
        App::Grpc { .. } => _grpc = weir_tests::apps::grpc::serve(listener),
    }
    // Tests wait for this line instead of sleeping.
    println!("listening {addr}");
    std::io::stdout().flush()?;
    std::future::pending::<()>().await;
    Ok(())
}
