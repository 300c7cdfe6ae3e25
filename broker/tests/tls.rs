//! HTTPS with rustls: certificate reload on change, and client-certificate auth.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use std::path::Path;
use std::time::Duration;
use tollgate_broker::config::server::TlsConfig;

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        Ca {
            issuer: CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap(),
        }
    }
    /// (cert PEM, key PEM)
    fn leaf(&self, san: &str, usage: ExtendedKeyUsagePurpose) -> (String, String) {
        let mut p = CertificateParams::new(vec![san.to_string()]).unwrap();
        p.extended_key_usages = vec![usage];
        p.distinguished_name.push(DnType::CommonName, san);
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
    fn pem(&self) -> String {
        self.issuer.pem()
    }
}

fn client(root: &str, identity: Option<(&str, &str)>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(root.as_bytes()).unwrap()])
        .timeout(Duration::from_secs(5));
    if let Some((cert, key)) = identity {
        b = b.identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
    }
    b.build().unwrap()
}

fn write(dir: &Path, name: &str, text: &str) {
    // Write-then-rename, as cert-manager and certbot do: a reader never sees half a file.
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, dir.join(name)).unwrap();
}

#[tokio::test]
async fn https_with_client_certs_and_reload() {
    let b = common::start("").await; // for its AppState and mock
    let dir = tempfile::tempdir().unwrap();
    let ca1 = Ca::new("server ca 1");
    let ca2 = Ca::new("server ca 2");
    let clients = Ca::new("client ca");
    let (cert, key) = ca1.leaf("127.0.0.1", ExtendedKeyUsagePurpose::ServerAuth);
    write(dir.path(), "cert.pem", &cert);
    write(dir.path(), "key.pem", &key);
    write(dir.path(), "clients.pem", &clients.pem());
    let cfg = TlsConfig {
        cert_file: dir.path().join("cert.pem"),
        key_file: dir.path().join("key.pem"),
        client_ca_file: Some(dir.path().join("clients.pem")),
        reload_interval_secs: 1,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tollgate_broker::server::serve_on(
        b.state.clone(),
        listener,
        Duration::from_secs(5),
        Some(cfg),
        async move {
            let _ = stop_rx.await;
        },
    ));
    let url = format!("https://{addr}/healthz");
    let (ccert, ckey) = clients.leaf("dev-laptop", ExtendedKeyUsagePurpose::ClientAuth);
    let good = client(&ca1.pem(), Some((&ccert, &ckey)));
    let mut ok = false;
    for _ in 0..50 {
        if let Ok(r) = good.get(&url).send().await {
            assert_eq!(r.status(), 200);
            assert_eq!(r.text().await.unwrap(), "ok");
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "HTTPS with a client certificate did not work");

    // No client certificate, or one from another CA: the handshake is refused.
    assert!(client(&ca1.pem(), None).get(&url).send().await.is_err());
    let (ocert, okey) = Ca::new("other").leaf("intruder", ExtendedKeyUsagePurpose::ClientAuth);
    assert!(
        client(&ca1.pem(), Some((&ocert, &okey)))
            .get(&url)
            .send()
            .await
            .is_err()
    );
    // Plain HTTP on the TLS port gets nothing useful.
    assert!(
        !reqwest::get(format!("http://{addr}/healthz"))
            .await
            .is_ok_and(|r| r.status() == 200)
    );

    // Rotate the server certificate on disk: new handshakes use it without a restart.
    let (cert2, key2) = ca2.leaf("127.0.0.1", ExtendedKeyUsagePurpose::ServerAuth);
    write(dir.path(), "key.pem", &key2);
    write(dir.path(), "cert.pem", &cert2);
    let trusts_new = client(&ca2.pem(), Some((&ccert, &ckey)));
    let mut reloaded = false;
    for _ in 0..100 {
        if trusts_new.get(&url).send().await.is_ok() {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reloaded, "the new certificate was not picked up");
    assert!(
        client(&ca1.pem(), Some((&ccert, &ckey)))
            .get(&url)
            .send()
            .await
            .is_err()
    );

    // A broken file is refused and the current certificate stays in service.
    write(
        dir.path(),
        "cert.pem",
        "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n",
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(trusts_new.get(&url).send().await.unwrap().status(), 200);

    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
}

#[test]
fn bad_tls_files_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.pem"), "garbage").unwrap();
    let cfg = TlsConfig {
        cert_file: dir.path().join("c.pem"),
        key_file: dir.path().join("missing.pem"),
        client_ca_file: None,
        reload_interval_secs: 1,
    };
    let e = tollgate_broker::tls::load(&cfg)
        .expect_err("must fail")
        .to_string();
    assert!(e.contains("c.pem") || e.contains("missing.pem"), "{e}");
}
