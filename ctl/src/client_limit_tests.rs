//! The admin client takes responses over tonic's 4 MiB default: `status` of a large mesh is
//! one message. Plaintext and in-process, since the limit is the client's, not TLS's.

use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};
use weir_proto::admin::v1::admin_server::{Admin, AdminServer};
use weir_proto::admin::v1::*;

use super::{BearerToken, MAX_RESPONSE_BYTES, admin_client};

/// Answers `status` with a fixed response; every other call is not needed here.
struct Fixed(StatusResponse);

/// The whole impl comes from the macro: `async_trait` only rewrites methods it can see, and a
/// macro call inside the impl is expanded after it ran.
macro_rules! fixed_status_server {
    ($($name:ident($request:ty) -> $response:ty;)*) => {
        #[tonic::async_trait]
        impl Admin for Fixed {
            async fn status(
                &self,
                _: Request<StatusRequest>,
            ) -> Result<Response<StatusResponse>, Status> {
                Ok(Response::new(self.0.clone()))
            }
            $(async fn $name(&self, _: Request<$request>) -> Result<Response<$response>, Status> {
                Err(Status::unimplemented("test server"))
            })*
        }
    };
}

fixed_status_server! {
    apply(ApplyRequest) -> ApplyResponse;
    get(GetRequest) -> GetResponse;
    delete(DeleteRequest) -> DeleteResponse;
    history(HistoryRequest) -> HistoryResponse;
    rollback(RollbackRequest) -> RollbackResponse;
    endpoints(EndpointsRequest) -> EndpointsResponse;
    version(VersionRequest) -> VersionResponse;
    create_token(CreateTokenRequest) -> CreateTokenResponse;
    revoke_token(RevokeTokenRequest) -> RevokeTokenResponse;
    list_tokens(ListTokensRequest) -> ListTokensResponse;
    rotate_ca(RotateCaRequest) -> CaInfo;
    get_ca(GetCaRequest) -> CaInfo;
}

#[tokio::test]
async fn status_of_a_large_mesh_is_received() {
    use prost::Message as _;
    // 30,000 proxies with a NACK each: past 4 MiB, well under the raised limit.
    let proxies = (0..30_000)
        .map(|i| ProxyStatus {
            identity: format!("spiffe://weir.local/ns/shop/sa/service-{}", i % 100),
            service: format!("service-{}", i % 100),
            namespace: "shop".into(),
            inbound_address: format!("10.{}.{}.{}:4143", i / 65_536, i / 256 % 256, i % 256),
            acked_version: 41,
            last_nack_version: 42,
            last_nack_error: "ServicePolicy shop/x: spec.routes[0]: unknown service".into(),
            connected: true,
            replica: "weir-control-0".into(),
            ..Default::default()
        })
        .collect();
    let response = StatusResponse {
        version: 42,
        proxies,
        ..Default::default()
    };
    let size = response.encoded_len();
    assert!(
        (4 * 1024 * 1024..MAX_RESPONSE_BYTES).contains(&size),
        "{size}"
    );

    let incoming = TcpIncoming::bind(([127, 0, 0, 1], 0).into()).expect("bind");
    let addr = incoming.local_addr().expect("local addr");
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AdminServer::new(Fixed(response)))
            .serve_with_incoming(incoming),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut client = admin_client(channel, BearerToken::new(None).expect("no token"));
    let got = client
        .status(StatusRequest {})
        .await
        .expect("a large status is accepted")
        .into_inner();
    assert_eq!(got.proxies.len(), 30_000);
    server.abort();
}
