//! Kubernetes without an API server: the parts of a cluster a pod spec needs (a node, pod
//! networks, a kubelet that runs the spec, service-account tokens) made of namespaces and
//! processes, so `weirctl inject`'s real output can be run and not only validated.

pub mod cluster;
pub mod images;
pub mod jwt;
pub mod manifest;
pub mod pod;
