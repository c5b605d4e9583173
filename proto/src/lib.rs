//! gRPC contracts of Weir. The discovery, identity and admin services are defined with the
//! control-plane work; this crate exists now so the workspace layout is the final one.
