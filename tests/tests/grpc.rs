//! gRPC through both proxies: unary, bidi streaming, trailers and error statuses.

use std::time::Duration;

use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use weir_tests::apps::grpc::{TRAILER_NAME, TRAILER_VALUE};
use weir_tests::pb::echo_service_client::EchoServiceClient;
use weir_tests::pb::{EchoRequest, FailRequest};
use weir_tests::util::within;
use weir_tests::{Pair, apps};

const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A client that connects to the outbound proxy but addresses `echo`
/// (`:authority: echo`), as a meshed app would.
async fn client(pair: &Pair) -> EchoServiceClient<Channel> {
    let channel = Endpoint::from_shared(format!("http://{}", pair.entry()))
        .expect("endpoint")
        .origin("http://echo".parse().expect("origin"))
        .connect()
        .await
        .expect("connect to outbound proxy");
    EchoServiceClient::new(channel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_streaming_trailers_and_errors() {
    let app = apps::grpc::start().await;
    let pair = Pair::start(app.addr).await;
    let mut client = client(&pair).await;

    within(TEST_TIMEOUT, "unary Echo", async {
        let resp = client
            .echo(EchoRequest {
                message: "hi".into(),
                seq: 7,
            })
            .await
            .expect("Echo");
        assert_eq!(
            resp.metadata()
                .get(TRAILER_NAME)
                .and_then(|v| v.to_str().ok()),
            Some(TRAILER_VALUE),
            "custom trailer lost: {:?}",
            resp.metadata()
        );
        let reply = resp.into_inner();
        assert_eq!((reply.message.as_str(), reply.seq), ("hi", 7));
    })
    .await;

    within(TEST_TIMEOUT, "bidi Chat of 100 messages", async {
        let requests = tokio_stream::iter((0..100u64).map(|seq| EchoRequest {
            message: format!("m{seq}"),
            seq,
        }));
        let mut replies = client.chat(requests).await.expect("Chat").into_inner();
        let mut seen = 0u64;
        while let Some(reply) = replies.message().await.expect("Chat message") {
            assert_eq!(reply.seq, seen, "messages out of order");
            assert_eq!(reply.message, format!("m{seen}"));
            seen += 1;
        }
        assert_eq!(seen, 100);
        let trailers = replies
            .trailers()
            .await
            .expect("Chat trailers")
            .expect("Chat must end with trailers");
        assert_eq!(
            trailers.get(TRAILER_NAME).and_then(|v| v.to_str().ok()),
            Some(TRAILER_VALUE)
        );
    })
    .await;

    within(TEST_TIMEOUT, "failing call", async {
        // Non-ASCII and '%' exercise grpc-message percent-encoding end to end.
        let message = "no such thing: 100% missing ✗";
        let status = client
            .fail(FailRequest {
                code: Code::NotFound as i32,
                message: message.into(),
            })
            .await
            .expect_err("Fail must fail");
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        assert_eq!(status.message(), message);
        assert_eq!(
            status
                .metadata()
                .get(TRAILER_NAME)
                .and_then(|v| v.to_str().ok()),
            Some(TRAILER_VALUE)
        );
    })
    .await;

    assert_eq!(
        app.stats.hosts(),
        vec!["echo"; 3],
        "the app must see :authority echo"
    );
    assert!(
        app.stats
            .versions()
            .iter()
            .all(|v| *v == http::Version::HTTP_2),
        "gRPC must arrive as HTTP/2"
    );
    assert_eq!(app.stats.connections(), 1);
    assert_eq!(
        pair.inbound
            .metric("weir_requests_total", &[("direction", "inbound")])
            .await,
        3.0
    );
}
