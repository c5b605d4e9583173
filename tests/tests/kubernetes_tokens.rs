//! Identity from a Kubernetes service-account token: `weir-control serve --kubernetes-issuer
//! --kubernetes-jwks FILE` verifies the JWT a proxy presents (its `--token-file`, as the
//! injected pod's projected token) and certifies exactly `system:serviceaccount:NS:SA`. The
//! tokens are signed here: RS256 with a key made by the `openssl` CLI, ES256 with ring.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair, RsaPublicKeyComponents};
use serde_json::{Value, json};
use weir_tests::control::ControlPlane;
use weir_tests::util::{TestDir, wait_until, within};
use weir_tests::{Proxy, apps};

const ISS: &str = "https://kubernetes.default.svc.cluster.local";

enum Signer {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

struct Key {
    kid: &'static str,
    signer: Signer,
}

impl Key {
    fn rsa(kid: &'static str) -> Key {
        let out = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ])
            .output()
            .expect("run openssl (.ci/run installs it)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // PKCS#8 PEM: the base64 between the armour lines is the DER ring reads.
        let pem = String::from_utf8(out.stdout).expect("PEM is ASCII");
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = STANDARD.decode(body).expect("PEM base64");
        Key {
            kid,
            signer: Signer::Rsa(RsaKeyPair::from_pkcs8(&der).expect("RSA PKCS#8")),
        }
    }

    fn ec(kid: &'static str) -> Key {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("P-256 key");
        Key {
            kid,
            signer: Signer::Ec(EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("key")),
        }
    }

    fn jwk(&self) -> Value {
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        match &self.signer {
            Signer::Rsa(k) => {
                let c: RsaPublicKeyComponents<Vec<u8>> = k.public().into();
                json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid,
                       "n": b64(&c.n), "e": b64(&c.e)})
            }
            Signer::Ec(k) => {
                let p = k.public_key().as_ref();
                json!({"kty": "EC", "use": "sig", "alg": "ES256", "crv": "P-256",
                       "kid": self.kid, "x": b64(&p[1..33]), "y": b64(&p[33..65])})
            }
        }
    }

    /// A projected token for `ns`/`sa` with audiences `aud`, valid for an hour.
    fn token(&self, ns: &str, sa: &str, aud: &[&str]) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let alg = match self.signer {
            Signer::Rsa(_) => "RS256",
            Signer::Ec(_) => "ES256",
        };
        let header = json!({"alg": alg, "kid": self.kid});
        let claims = json!({"iss": ISS, "aud": aud, "sub": format!("system:serviceaccount:{ns}:{sa}"),
                            "iat": now, "nbf": now, "exp": now + 3600});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let rng = SystemRandom::new();
        let sig = match &self.signer {
            Signer::Rsa(k) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &rng,
                    input.as_bytes(),
                    &mut sig,
                )
                .expect("sign");
                sig
            }
            Signer::Ec(k) => k
                .sign(&rng, input.as_bytes())
                .expect("sign")
                .as_ref()
                .to_vec(),
        };
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path.to_str().expect("utf-8 path").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_are_certified_for_the_service_account_in_their_token() {
    within(Duration::from_secs(90), "service-account tokens", async {
        let dir = TestDir::new("k8s-tokens").expect("dir");
        let (rsa, ec) = (Key::rsa("rsa-1"), Key::ec("ec-1"));
        let jwks = json!({"keys": [rsa.jwk(), ec.jwk()]}).to_string();
        let jwks = write(dir.path(), "jwks.json", &jwks);
        let cp = ControlPlane::start_with(
            &dir.join("data"),
            dir.path(),
            &["--kubernetes-issuer", ISS, "--kubernetes-jwks", &jwks],
        )
        .await;
        let echo_token = write(
            dir.path(),
            "echo.token",
            &ec.token("shop", "echo", &["weir"]),
        );
        let orders_token = write(
            dir.path(),
            "orders.token",
            &rsa.token("shop", "orders", &["kube-apiserver", "weir"]),
        );
        let meshed = |name: &str, token: &str| {
            Proxy::builder(name, dir.path())
                .service(name)
                .namespace("shop")
                .control_plane(&cp)
                .arg("--token-file")
                .arg(token)
        };
        let app = apps::http::start("app").await;
        // No MeshConfig: strict mTLS, so a call proves both certificates.
        let callee = meshed("echo", &echo_token).app_addr(app.addr).start().await;
        let caller = meshed("orders", &orders_token).start().await;
        wait_until(
            "orders can call echo over mTLS",
            Duration::from_secs(20),
            || async { weir_tests::load::call(caller.outbound(), "echo").await.0 == 200 },
        )
        .await;
        let seen = weir_tests::client::get_json(caller.outbound(), "echo", "/echo").await;
        assert_eq!(
            seen["headers"]["x-weir-client-id"][0], "spiffe://weir.local/ns/shop/sa/orders",
            "{seen}"
        );
        for id in ["ns/shop/sa/echo", "ns/shop/sa/orders"] {
            assert!(
                cp.log_contains(&format!("identity=\"spiffe://weir.local/{id}\"")),
                "{id} not certified:\n{}",
                cp.log_tail()
            );
        }
        assert!(
            callee.log_contains("certificate issued"),
            "{}",
            callee.log_tail()
        );

        // A token for another audience (e.g. the API server's own) is refused, and both logs
        // say why.
        let intruder_token = write(
            dir.path(),
            "intruder.token",
            &rsa.token("shop", "intruder", &["kube-apiserver"]),
        );
        let intruder = meshed("intruder", &intruder_token).spawn();
        let reason = r#"audience ["kube-apiserver"] does not include "weir""#;
        wait_until(
            "both logs name the refusal",
            Duration::from_secs(20),
            || async { cp.log_contains(reason) && intruder.log_contains(reason) },
        )
        .await;
        assert!(cp.log_contains("certify refused"), "{}", cp.log_tail());
        assert!(
            !cp.log_contains("spiffe://weir.local/ns/shop/sa/intruder"),
            "{}",
            cp.log_tail()
        );
        let ready = intruder.admin_get("/ready").await;
        assert_eq!(ready.status, 503, "{}", ready.text());
        drop(callee);
    })
    .await;
}
