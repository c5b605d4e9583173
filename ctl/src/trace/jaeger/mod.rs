//! Jaeger's two trace JSON formats, reduced to [`Trace`](super::model::Trace): `v1` reads the
//! first below, `otlp` the other two.
//!
//! Mirrors, field for field:
//! - the v1 JSON model of Jaeger 1.x query (`model/json/model.go`), served at
//!   `/api/traces/{id}` and `/api/traces?service=…` by Jaeger 1.x and still by Jaeger 2.x for
//!   its UI: `{"data":[{"traceID","spans":[…],"processes":{…}}],"errors":[{"code","msg"}]}`,
//!   times in microseconds, the parent in `references` (`CHILD_OF`, else `FOLLOWS_FROM`);
//! - api_v3 (`/api/v3/traces/{id}` and the search `/api/v3/traces?query.…`, the HTTP gateway of
//!   Jaeger 2.x's jaegerquery extension and of Jaeger 1.x query): OTLP JSON wrapped as
//!   `{"result":{"resourceSpans":[…]}}`, a search's traces all in one `resourceSpans` list;
//!   errors, including a search that found nothing (404), as
//!   `{"error":{"httpCode","message"}}`. It is gogo `jsonpb` output: 64-bit numbers are
//!   strings, zero values are left out, ids are hex, enums are numbers (names are accepted
//!   too), the service is the resource's `service.name`.
//! - the same OTLP JSON without the wrapper: one line of an OpenTelemetry Collector `file`
//!   exporter or of `weir-proxy --trace-file` (see `files`), where ids may also be base64.
//!
//! Fields the renderer does not use (logs, flags, scope) are not parsed, so a newer Jaeger
//! or collector adding fields cannot break `weirctl trace`.

mod otlp;
mod v1;

pub use otlp::{gateway_error, parse_otlp, parse_v3};
pub use v1::{V1, parse_v1};
