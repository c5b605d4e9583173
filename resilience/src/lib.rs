//! Resilience primitives used by the proxy's request path. Each module owns one behaviour and
//! knows nothing about sockets: the proxy wires them into its layers.
