//! Trace context propagation and span export for the proxy.
