//! A real etcd member serving TLS with `--client-cert-auth`, its certificates made here with
//! rcgen: the store works over it with a client certificate, and without one, with one etcd
//! does not trust, or with a CA that did not sign etcd's certificate, the error says TLS, why,
//! and which endpoint.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};
use weir_proto::admin::v1::GetRequest;

use super::etcd::{Member, launch, prefix};
use super::{POLICY, TestServer};
use crate::store::etcd::{ClientCert, EtcdTls};
use crate::store::{EtcdConfig, Store};

/// The PEM files of one test PKI: a CA, etcd's serving certificate and a client certificate
/// it signed, and a second CA that signed nothing etcd uses.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn client(&self) -> ClientCert {
        ClientCert {
            cert: self.path("client.crt"),
            key: self.path("client.key"),
        }
    }
}

fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::new()).expect("CA params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let pem = params.self_signed(&key).expect("CA").pem();
    (pem, Issuer::new(params, key))
}

/// A certificate signed by `issuer`, as (certificate, key) PEM.
fn leaf(
    issuer: &Issuer<'static, KeyPair>,
    name: &str,
    sans: Vec<SanType>,
    usages: Vec<ExtendedKeyUsagePurpose>,
) -> (String, String) {
    let key = KeyPair::generate().expect("leaf key");
    let mut params = CertificateParams::new(Vec::new()).expect("leaf params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.subject_alt_names = sans;
    params.extended_key_usages = usages;
    let cert = params.signed_by(&key, issuer).expect("leaf");
    (cert.pem(), key.serialize_pem())
}

fn make_pki() -> Pki {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, pem: &str| std::fs::write(dir.path().join(name), pem).expect("write");
    let (ca_pem, issuer) = ca("weir test etcd CA");
    write("ca.crt", &ca_pem);
    let localhost = std::net::Ipv4Addr::LOCALHOST.into();
    // etcd's gRPC gateway dials etcd itself with the serving certificate: client auth too.
    let (cert, key) = leaf(
        &issuer,
        "etcd",
        vec![
            SanType::IpAddress(localhost),
            SanType::DnsName("localhost".try_into().expect("DNS name")),
        ],
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    );
    write("server.crt", &cert);
    write("server.key", &key);
    let (cert, key) = leaf(
        &issuer,
        "weir-control",
        Vec::new(),
        vec![ExtendedKeyUsagePurpose::ClientAuth],
    );
    write("client.crt", &cert);
    write("client.key", &key);
    let (other_pem, other) = ca("not etcd's CA");
    write("other-ca.crt", &other_pem);
    let (cert, key) = leaf(
        &other,
        "stranger",
        Vec::new(),
        vec![ExtendedKeyUsagePurpose::ClientAuth],
    );
    write("stranger.crt", &cert);
    write("stranger.key", &key);
    Pki { dir }
}

/// One TLS member and its PKI for this test binary.
fn member() -> &'static (Member, Pki) {
    static MEMBER: OnceLock<(Member, Pki)> = OnceLock::new();
    MEMBER.get_or_init(|| {
        let pki = make_pki();
        let flag = |flag: &str, file: &str| [OsString::from(flag), pki.path(file).into()];
        let mut extra: Vec<OsString> = Vec::new();
        extra.extend(flag("--cert-file", "server.crt"));
        extra.extend(flag("--key-file", "server.key"));
        extra.extend(flag("--trusted-ca-file", "ca.crt"));
        extra.push("--client-cert-auth".into());
        (launch("https", extra), pki)
    })
}

/// A store config for the TLS member with `tls`, on a prefix of its own.
fn config(tls: impl FnOnce(&Pki) -> EtcdTls) -> EtcdConfig {
    let (member, pki) = member();
    EtcdConfig {
        prefix: prefix(),
        // Failures are immediate; a short timeout keeps the failing tests short.
        request_timeout: Duration::from_millis(500),
        tls: tls(pki),
        ..EtcdConfig::parse(&format!("etcd:{}", member.client_url)).expect("etcd config")
    }
}

fn full(pki: &Pki) -> EtcdTls {
    EtcdTls {
        ca: Some(pki.path("ca.crt")),
        client: Some(pki.client()),
    }
}

fn open_error(config: EtcdConfig) -> String {
    match Store::open_etcd(config) {
        Ok(_) => panic!("the store opened"),
        Err(err) => err.to_string(),
    }
}

#[tokio::test]
async fn store_round_trip_over_tls_with_a_client_certificate() {
    let config = EtcdConfig {
        request_timeout: Duration::from_secs(2),
        ..config(full)
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_on(dir.path(), &Some(config)).await;
    server.apply(POLICY).await.expect("apply over TLS");
    let request = GetRequest {
        kind: "ServicePolicy".into(),
        namespace: "shop".into(),
        name: "payments".into(),
    };
    let got = server
        .admin()
        .await
        .get(server.authed(request))
        .await
        .expect("get over TLS")
        .into_inner();
    assert_eq!(got.objects.len(), 1, "{got:?}");
    assert!(got.objects[0].json.contains("\"2s\""), "{got:?}");
    server.stop().await;
}

#[test]
fn without_a_client_certificate_the_error_names_tls_and_the_endpoint() {
    let config = config(|pki| EtcdTls {
        ca: Some(pki.path("ca.crt")),
        client: None,
    });
    let url = config.endpoints[0].clone();
    let err = open_error(config);
    assert!(err.contains(&format!("{url}: TLS: ")), "{err}");
    assert!(err.contains("give --etcd-cert and --etcd-key"), "{err}");
}

#[test]
fn a_ca_that_did_not_sign_etcd_is_refused_with_tls_and_the_endpoint() {
    let config = config(|pki| EtcdTls {
        ca: Some(pki.path("other-ca.crt")),
        client: Some(pki.client()),
    });
    let url = config.endpoints[0].clone();
    let err = open_error(config);
    assert!(err.contains(&format!("{url}: TLS: ")), "{err}");
    assert!(err.contains("certificate"), "{err}");
    assert!(err.contains("not signed by a root in --etcd-ca"), "{err}");
    assert!(err.contains("until TLS to etcd works"), "{err}");
}

#[test]
fn a_client_certificate_etcd_does_not_trust_is_refused_with_tls_and_the_endpoint() {
    let config = config(|pki| EtcdTls {
        ca: Some(pki.path("ca.crt")),
        client: Some(ClientCert {
            cert: pki.path("stranger.crt"),
            key: pki.path("stranger.key"),
        }),
    });
    let url = config.endpoints[0].clone();
    let err = open_error(config);
    assert!(err.contains(&format!("{url}: TLS: ")), "{err}");
    assert!(err.contains("refused the client certificate"), "{err}");
}

/// What `weir-control serve` prints when it cannot start: the same reason, from an async
/// caller (which must not drop the store's runtime in place).
#[tokio::test]
async fn the_servers_startup_error_names_tls_and_the_endpoint() {
    let bind_error = |etcd: EtcdConfig| async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = crate::ServerConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            etcd: Some(etcd),
            ..crate::ServerConfig::new(dir.path())
        };
        match crate::bind(config).await {
            Ok(_) => panic!("the server started"),
            Err(err) => err.to_string(),
        }
    };
    let etcd = config(|pki| EtcdTls {
        ca: Some(pki.path("ca.crt")),
        client: None,
    });
    let url = etcd.endpoints[0].clone();
    let err = bind_error(etcd).await;
    assert!(err.starts_with("cannot open the etcd store: "), "{err}");
    assert!(err.contains(&format!("{url}: TLS: ")), "{err}");
    let missing = member().1.path("missing.pem");
    let err = bind_error(config(|_| EtcdTls {
        ca: Some(missing.clone()),
        client: None,
    }))
    .await;
    let expected = format!("--etcd-ca {}: cannot read it", missing.display());
    assert!(err.contains(&expected), "{err}");
}

/// A file's problem is reported before anything is dialled, with its flag and path.
#[test]
fn unreadable_or_invalid_pem_names_the_flag_and_the_file() {
    let pki = &member().1;
    let config = |tls: EtcdTls| EtcdConfig {
        tls,
        ..EtcdConfig::parse("etcd:https://127.0.0.1:1").expect("etcd config")
    };
    let missing = pki.path("missing.pem");
    let not_pem = pki.path("not.pem");
    std::fs::write(&not_pem, "not a certificate\n").expect("write");
    let show = |path: &Path| path.display().to_string();

    let err = open_error(config(EtcdTls {
        ca: Some(missing.clone()),
        client: None,
    }));
    assert!(
        err.contains(&format!("--etcd-ca {}: cannot read it", show(&missing))),
        "{err}"
    );
    let err = open_error(config(EtcdTls {
        ca: Some(not_pem.clone()),
        client: None,
    }));
    assert!(
        err.contains(&format!("--etcd-ca {}: no certificate", show(&not_pem))),
        "{err}"
    );
    let err = open_error(config(EtcdTls {
        ca: Some(pki.path("ca.crt")),
        client: Some(ClientCert {
            cert: pki.path("client.crt"),
            key: not_pem.clone(),
        }),
    }));
    assert!(
        err.contains(&format!("--etcd-key {}: no private key", show(&not_pem))),
        "{err}"
    );
    let err = open_error(config(EtcdTls {
        ca: Some(pki.path("ca.crt")),
        client: Some(ClientCert {
            cert: pki.path("client.key"),
            key: pki.path("client.key"),
        }),
    }));
    assert!(err.contains("--etcd-cert "), "{err}");
}

#[test]
fn tls_files_with_http_endpoints_are_refused() {
    let config = EtcdConfig {
        tls: EtcdTls {
            ca: Some("ca.crt".into()),
            client: None,
        },
        ..EtcdConfig::parse("etcd:http://127.0.0.1:1").expect("etcd config")
    };
    let err = open_error(config);
    assert!(
        err.contains("TLS to etcd (--etcd-ca) needs https:// etcd endpoints"),
        "{err}"
    );
}
