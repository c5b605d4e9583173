//! The gRPC test app (`weir.testing.v1.EchoService`), served by hyper so the test
//! controls the HTTP layer: it records the `:authority` seen and adds a custom
//! trailer to every response.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use http::HeaderValue;
use http_body_util::BodyExt;
use tokio::net::TcpListener;
use tonic::codegen::Service;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use super::{HttpStats, Server, serve_http};
use crate::pb::echo_service_server::{EchoService, EchoServiceServer};
use crate::pb::{EchoReply, EchoRequest, FailRequest};
use crate::util::BoxError;

/// Name and value of the trailer added to every gRPC response.
pub const TRAILER_NAME: &str = "x-echo-trailer";
pub const TRAILER_VALUE: &str = "trailer-intact";

pub async fn start() -> Server {
    serve(super::bind_loopback().await)
}

pub fn serve(listener: TcpListener) -> Server {
    let svc = EchoServiceServer::new(Echo);
    serve_http(listener, Arc::new(HttpStats::default()), move |req| {
        let mut svc = svc.clone();
        async move {
            let resp = match svc.call(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            // Tonic sets trailers only from the status; a real service may add its
            // own, and they must survive both proxies.
            resp.map(|body| {
                body.map_frame(|mut frame| {
                    if let Some(trailers) = frame.trailers_mut() {
                        trailers.insert(TRAILER_NAME, HeaderValue::from_static(TRAILER_VALUE));
                    }
                    frame
                })
                .map_err(|status| Box::new(status) as BoxError)
                .boxed_unsync()
            })
        }
    })
}

struct Echo;

type ChatStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

#[tonic::async_trait]
impl EchoService for Echo {
    async fn echo(&self, req: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let EchoRequest { message, seq } = req.into_inner();
        Ok(Response::new(EchoReply { message, seq }))
    }

    type ChatStream = ChatStream;

    async fn chat(
        &self,
        req: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<Self::ChatStream>, Status> {
        let replies = req
            .into_inner()
            .map(|item| item.map(|EchoRequest { message, seq }| EchoReply { message, seq }));
        Ok(Response::new(Box::pin(replies)))
    }

    async fn fail(&self, req: Request<FailRequest>) -> Result<Response<EchoReply>, Status> {
        let FailRequest { code, message } = req.into_inner();
        let mut md = MetadataMap::new();
        md.insert(TRAILER_NAME, TRAILER_VALUE.parse().expect("static ASCII"));
        Err(Status::with_metadata(code.into(), message, md))
    }
}
