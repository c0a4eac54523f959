//! TLS on the gRPC port, over the real binary: a client that trusts the server's CA works, a
//! plaintext client and a client trusting another CA are refused, and with `client_ca_file` a
//! client certificate from that CA is required. The certificates are made by the test (rcgen).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use sidb::proto as pb;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::common::*;

/// A CA and one certificate it signed, written as PEM files into a directory.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

/// Makes a CA called `name` and a leaf for `localhost` and 127.0.0.1 signed by it.
fn pki(dir: &Path, name: &str) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("{name} CA"));
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf_params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, format!("{name} leaf"));
    let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();
    let out = Pki {
        ca: dir.join(format!("{name}-ca.pem")),
        cert: dir.join(format!("{name}-cert.pem")),
        key: dir.join(format!("{name}-key.pem")),
    };
    std::fs::write(&out.ca, ca.pem()).unwrap();
    std::fs::write(&out.cert, leaf.pem()).unwrap();
    std::fs::write(&out.key, leaf_key.serialize_pem()).unwrap();
    out
}

fn https(process: &SidbProcess) -> String {
    process.url.replace("http://", "https://")
}

/// An endpoint that trusts `ca` and, if given, presents `client`'s certificate.
fn endpoint(url: &str, ca: &Path, client: Option<&Pki>) -> Endpoint {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
        .domain_name("localhost");
    if let Some(c) = client {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(&c.cert).unwrap(),
            std::fs::read(&c.key).unwrap(),
        ));
    }
    Channel::from_shared(url.to_string())
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .tls_config(tls)
        .unwrap()
}

/// Lists collections over `endpoint`: Ok(names) or the error at connect or call.
async fn list(endpoint: Endpoint) -> Result<Vec<String>, String> {
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    let reply = pb::collections_client::CollectionsClient::new(channel)
        .list_collections(pb::ListCollectionsRequest::default())
        .await
        .map_err(|s| format!("call: {s:?}"))?;
    Ok(reply
        .into_inner()
        .collections
        .into_iter()
        .map(|c| c.name)
        .collect())
}

/// The environment that turns TLS on with `server`'s certificate (and client certificates from
/// `client_ca` required, if given).
fn tls_env<'a>(server: &'a Pki, client_ca: Option<&'a str>) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![
        (
            "SIDB__SERVER__TLS__CERT_FILE",
            server.cert.to_str().unwrap(),
        ),
        ("SIDB__SERVER__TLS__KEY_FILE", server.key.to_str().unwrap()),
    ];
    if let Some(client_ca) = client_ca {
        env.push(("SIDB__SERVER__TLS__CLIENT_CA_FILE", client_ca));
    }
    env
}

#[tokio::test]
async fn tls_serves_a_client_that_trusts_its_ca_and_refuses_plaintext_and_other_cas() {
    let tmp = tempfile::tempdir().unwrap();
    let good = pki(tmp.path(), "good");
    let other = pki(tmp.path(), "other");
    let data = tmp.path().join("data");
    let env = tls_env(&good, None);
    let process = launch_sidb(&data, &env);
    let url = https(&process);
    wait_serving_on(endpoint(&url, &good.ca, None)).await;

    let channel = endpoint(&url, &good.ca, None).connect().await.unwrap();
    pb::collections_client::CollectionsClient::new(channel)
        .create_collection(pb::CreateCollectionRequest {
            name: "secure".into(),
            config: Some(config(4, 0)),
        })
        .await
        .expect("create over TLS");
    assert_eq!(
        list(endpoint(&url, &good.ca, None)).await.unwrap(),
        vec!["secure".to_string()]
    );

    // A plaintext client gets no answer from the TLS port.
    let plain = Channel::from_shared(process.url.clone())
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5));
    list(plain).await.expect_err("plaintext must be refused");

    // A client that trusts another CA refuses the server's certificate.
    let err = list(endpoint(&url, &other.ca, None))
        .await
        .expect_err("a certificate from an unknown CA must be refused");
    assert!(
        err.contains("UnknownIssuer") || err.contains("invalid peer certificate"),
        "{err}"
    );
    process.kill_9();
}

#[tokio::test]
async fn with_a_client_ca_only_clients_with_its_certificates_get_in() {
    let tmp = tempfile::tempdir().unwrap();
    let server = pki(tmp.path(), "server");
    let clients = pki(tmp.path(), "clients");
    let strangers = pki(tmp.path(), "strangers");
    let data = tmp.path().join("data");
    let env = tls_env(&server, Some(clients.ca.to_str().unwrap()));
    let process = launch_sidb(&data, &env);
    let url = https(&process);
    wait_serving_on(endpoint(&url, &server.ca, Some(&clients))).await;

    assert!(list(endpoint(&url, &server.ca, Some(&clients)))
        .await
        .is_ok());
    list(endpoint(&url, &server.ca, None))
        .await
        .expect_err("no client certificate");
    list(endpoint(&url, &server.ca, Some(&strangers)))
        .await
        .expect_err("a client certificate from another CA");

    // The command-line tools reach it with the same files: the request gets through TLS and
    // reaches the handler (the collection does not exist).
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let (ca, cert, key) = (path(&server.ca), path(&clients.cert), path(&clients.key));
    let (ok, stderr) = run_sidb(
        &[
            "training",
            "versions",
            "--collection",
            "none",
            "--addr",
            &url,
            "--tls-ca",
            &ca,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ],
        &[],
    );
    assert!(!ok);
    assert!(
        stderr.contains("NotFound") || stderr.contains("not found"),
        "{stderr}"
    );
    process.kill_9();
}

#[tokio::test]
async fn the_cli_sends_its_api_key_over_tls() {
    let tmp = tempfile::tempdir().unwrap();
    let server = pki(tmp.path(), "server");
    let data = tmp.path().join("data");
    let mut env = tls_env(&server, None);
    env.push(("SIDB__AUTH__API_KEYS", "[\"s3cret\"]"));
    let process = launch_sidb(&data, &env);
    let url = https(&process);
    // Health needs no key.
    wait_serving_on(endpoint(&url, &server.ca, None)).await;
    let ca = server.ca.to_str().unwrap();
    let versions = [
        "training",
        "versions",
        "--collection",
        "none",
        "--addr",
        &url,
        "--tls-ca",
        ca,
    ];
    let (ok, stderr) = run_sidb(&versions, &[]);
    assert!(!ok);
    assert!(
        stderr.contains("Unauthenticated") || stderr.contains("missing API key"),
        "{stderr}"
    );
    let (ok, stderr) = run_sidb(&versions, &[("SIDB_API_KEY", "s3cret")]);
    assert!(!ok);
    assert!(
        stderr.contains("NotFound") || stderr.contains("not found"),
        "{stderr}"
    );
    // An https:// address without the CA is a usage error, named.
    let (ok, stderr) = run_sidb(&versions[..6], &[]);
    assert!(!ok);
    assert!(stderr.contains("--tls-ca"), "{stderr}");
    process.kill_9();
}

#[tokio::test]
async fn a_missing_or_broken_certificate_stops_the_start_with_its_setting_named() {
    let tmp = tempfile::tempdir().unwrap();
    let server = pki(tmp.path(), "server");
    let data = tmp.path().join("data");
    let data = data.to_str().unwrap();
    let serve = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--http-listen",
        "",
        "--data-dir",
        data,
    ];
    let start = |env: &[(&str, &str)]| run_sidb(&serve, env);
    let missing = tmp.path().join("missing.pem");
    let (ok, stderr) = start(&[
        ("SIDB__SERVER__TLS__CERT_FILE", missing.to_str().unwrap()),
        ("SIDB__SERVER__TLS__KEY_FILE", server.key.to_str().unwrap()),
    ]);
    assert!(!ok);
    assert!(stderr.contains("server.tls.cert_file"), "{stderr}");
    let (ok, stderr) = start(&[(
        "SIDB__SERVER__TLS__CERT_FILE",
        server.cert.to_str().unwrap(),
    )]);
    assert!(!ok);
    assert!(stderr.contains("server.tls.key_file"), "{stderr}");
    // A key that is not the certificate's.
    let garbage = tmp.path().join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let (ok, stderr) = start(&[
        (
            "SIDB__SERVER__TLS__CERT_FILE",
            server.cert.to_str().unwrap(),
        ),
        ("SIDB__SERVER__TLS__KEY_FILE", garbage.to_str().unwrap()),
    ]);
    assert!(!ok);
    assert!(stderr.contains("server.tls"), "{stderr}");
}
