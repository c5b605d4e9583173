//! WebSocket upgrade through both proxies: after the 101 the connection is an
//! opaque byte stream end to end.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use weir_tests::util::within;
use weir_tests::{Pair, apps};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_messages_are_echoed() {
    let app = apps::http::start("app").await;
    let pair = Pair::start(app.addr).await;

    within(Duration::from_secs(30), "websocket echo", async {
        let stream = tokio::net::TcpStream::connect(pair.entry())
            .await
            .expect("connect outbound");
        // The URI's host becomes the Host header: the mesh name `echo`.
        let request = "ws://echo/ws".into_client_request().expect("ws request");
        let (mut ws, resp) = tokio_tungstenite::client_async(request, stream)
            .await
            .expect("websocket handshake through the proxies");
        assert_eq!(resp.status(), 101);

        let mut sent = Vec::new();
        for i in 0..5u8 {
            sent.push(Message::text(format!("hello {i}")));
            // Binary frames with every byte value, sizes crossing frame-header widths.
            let len = [1usize, 125, 126, 65_535, 70_000][usize::from(i)];
            sent.push(Message::binary(
                (0..len).map(|j| (j as u8) ^ i).collect::<Vec<u8>>(),
            ));
        }
        for msg in &sent {
            ws.send(msg.clone()).await.expect("send");
            let echoed = ws
                .next()
                .await
                .expect("connection closed early")
                .expect("receive");
            assert_eq!(&echoed, msg);
        }
        ws.close(None).await.expect("close");
    })
    .await;

    let versions = app.stats.versions();
    assert_eq!(
        versions,
        vec![http::Version::HTTP_11],
        "upgrade must arrive as HTTP/1.1"
    );
}
