//! TLS termination end to end: certificates made by the openssl CLI,
//! chosen by SNI (curl --resolve/--cacert, openssl s_client), HTTP/2 by
//! ALPN, replaced through `POST /config` while connections opened before
//! (HTTP/1.1 keep-alive, a WebSocket) keep working, and https-only routes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bronze_gateway::{Config, Server};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

use super::{Gw, curl, echo, gateway_with, s, ws_echo};

/// A throwaway PKI in a temporary directory, made with the openssl CLI.
struct Pki {
    dir: tempfile::TempDir,
    serial: std::cell::Cell<u32>,
}

/// A certificate: its PEM texts and where they are on disk.
#[derive(Clone)]
struct Issued {
    cert: String,
    key: String,
    cert_path: PathBuf,
    key_path: PathBuf,
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
            serial: std::cell::Cell::new(1),
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// A self-signed CA (EC P-256).
    fn ca(&self, name: &str) -> Issued {
        let (cert, key) = (
            self.path(&format!("{name}.pem")),
            self.path(&format!("{name}.key")),
        );
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &key,
            "-out",
            &cert,
        ]);
        Self::read(cert, key)
    }

    /// A server certificate for `sans` (DNS names), CN `cn`, signed by `ca`;
    /// an RSA key when `rsa`, else EC P-256.
    fn leaf(&self, ca: &Issued, cn: &str, sans: &[&str], rsa: bool) -> Issued {
        self.issue(ca, cn, sans, rsa, "serverAuth")
    }

    /// A certificate as `leaf` makes, for the extended key usage `eku`
    /// (`serverAuth`, `clientAuth`).
    fn issue(&self, ca: &Issued, cn: &str, sans: &[&str], rsa: bool, eku: &str) -> Issued {
        let n = self.serial.get();
        self.serial.set(n + 1);
        let base = format!("leaf{n}");
        let (cert, key, csr, ext) = (
            self.path(&format!("{base}.pem")),
            self.path(&format!("{base}.key")),
            self.path(&format!("{base}.csr")),
            self.path(&format!("{base}.ext")),
        );
        let newkey: &[&str] = if rsa {
            &["-newkey", "rsa:2048"]
        } else {
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
        };
        let subj = format!("/CN={cn}");
        let mut args = vec!["req"];
        args.extend_from_slice(newkey);
        args.extend_from_slice(&["-nodes", "-subj", &subj, "-keyout", &key, "-out", &csr]);
        openssl(&args);
        let sans: Vec<String> = sans.iter().map(|n| format!("DNS:{n}")).collect();
        std::fs::write(
            &ext,
            format!(
                "subjectAltName={}\nbasicConstraints=CA:FALSE\nextendedKeyUsage={eku}\n",
                sans.join(",")
            ),
        )
        .expect("write ext");
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca.cert_path.display().to_string(),
            "-CAkey",
            &ca.key_path.display().to_string(),
            "-set_serial",
            &n.to_string(),
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &cert,
        ]);
        Self::read(cert, key)
    }

    fn read(cert: String, key: String) -> Issued {
        Issued {
            cert: std::fs::read_to_string(&cert).expect("cert"),
            key: std::fs::read_to_string(&key).expect("key"),
            cert_path: cert.into(),
            key_path: key.into(),
        }
    }
}

/// A gateway with a TLS listener (and the plain one).
struct TlsGw {
    addr: SocketAddr,
    tls: SocketAddr,
    admin: SocketAddr,
    _gw: Gw,
}

async fn tls_gateway(declarative: serde_json::Value, tune: impl FnOnce(&mut Config)) -> TlsGw {
    let gw = gateway_with(declarative, |config| {
        config.tls_addr = "127.0.0.1:0".into();
        tune(config);
        config.validate().expect("valid config");
    })
    .await;
    TlsGw {
        addr: gw.addr,
        tls: gw.tls.expect("a TLS listener"),
        admin: gw.admin,
        _gw: gw,
    }
}

/// curl's exit code and what it wrote to stdout.
async fn curl_raw(args: Vec<String>) -> (i32, String) {
    tokio::task::spawn_blocking(move || {
        let out = Command::new("curl")
            .arg("-s")
            .args(&args)
            .output()
            .expect("curl runs");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    })
    .await
    .expect("join")
}

/// `curl https://<host>:<port><path>` resolved to the gateway, trusting
/// only `ca`: (exit code, "<http_version> <status>", body).
async fn curl_https(
    gw: &TlsGw,
    host: &str,
    path: &str,
    ca: &Path,
    extra: &[&str],
) -> (i32, String, String) {
    let port = gw.tls.port();
    let mut args = s(&[
        "--resolve",
        &format!("{host}:{port}:127.0.0.1"),
        "--cacert",
        &ca.display().to_string(),
        "-w",
        "\n%{http_version} %{http_code}",
    ]);
    args.extend(s(extra));
    args.push(format!("https://{host}:{port}{path}"));
    let (code, out) = curl_raw(args).await;
    let (body, status) = out.rsplit_once('\n').unwrap_or(("", &out));
    (code, status.to_string(), body.to_string())
}

/// What `openssl s_client` sees when it connects with `servername`:
/// the subject line of the certificate served, or its error output.
async fn s_client(addr: SocketAddr, servername: &str, extra: &[&str]) -> String {
    let mut args = s(&[
        "s_client",
        "-connect",
        &addr.to_string(),
        "-servername",
        servername,
    ]);
    args.extend(s(extra));
    tokio::task::spawn_blocking(move || {
        let out = Command::new("openssl")
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        text.lines()
            .find(|l| l.starts_with("subject="))
            .map(str::to_string)
            .unwrap_or(text)
    })
    .await
    .expect("join")
}

/// A TLS connection from rustls trusting `roots`, with SNI `sni` and ALPN
/// http/1.1; also the leaf certificate the gateway served.
async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    roots: &[&Issued],
) -> (
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    CertificateDer<'static>,
) {
    bronze_runtime::install_crypto_provider();
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store
            .add(CertificateDer::from_pem_slice(r.cert.as_bytes()).expect("pem"))
            .expect("root");
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(sni.to_string()).expect("name"), tcp)
        .await
        .expect("TLS handshake");
    let leaf = tls.get_ref().1.peer_certificates().expect("certificates")[0].clone();
    (tls, leaf)
}

fn der(i: &Issued) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(i.cert.as_bytes()).expect("pem")
}

fn echo_service(backend: SocketAddr) -> serde_json::Value {
    serde_json::json!({"name": "users", "url": format!("http://{backend}/v1"), "routes": [
        {"name": "users", "paths": ["/users"]},
        {"name": "secure", "paths": ["/secure"], "protocols": ["https"]},
        {"name": "moved", "paths": ["/moved"], "protocols": ["https"],
         "https_redirect_status_code": 301},
        {"name": "both", "paths": ["/both"], "protocols": ["http", "https"]}
    ]})
}

#[tokio::test]
async fn each_sni_gets_its_certificate_and_h2_is_negotiated_by_alpn() {
    let backend = echo("a").await;
    let pki = Pki::new();
    let ca = pki.ca("ca1");
    let a = pki.leaf(&ca, "a.example.com", &["a.example.com"], false);
    let b = pki.leaf(
        &ca,
        "b.example.com",
        &["b.example.com", "b2.example.com"],
        true,
    );
    let wild = pki.leaf(&ca, "wild", &["*.wild.example.com"], false);
    let dual_ec = pki.leaf(&ca, "dual-ec", &["dual.example.com"], false);
    let dual_rsa = pki.leaf(&ca, "dual-rsa", &["dual.example.com"], true);
    let fallback = pki.leaf(&ca, "default.test", &["default.test"], false);
    let kong = serde_json::json!({
        "_format_version": "3.0",
        "services": [echo_service(backend)],
        "certificates": [
            // Kong's declarative form and the Admin API's form of snis.
            {"cert": a.cert, "key": a.key, "snis": [{"name": "a.example.com"}]},
            {"id": "b", "cert": b.cert, "key": b.key, "snis": ["B.example.com"], "tags": ["t"]},
            {"cert": wild.cert, "key": wild.key, "snis": ["*.wild.example.com"]},
            {"cert": dual_ec.cert, "key": dual_ec.key, "cert_alt": dual_rsa.cert,
             "key_alt": dual_rsa.key, "snis": ["dual.example.com"]}
        ],
        // Kong's top-level snis name a certificate by id.
        "snis": [{"name": "b2.example.com", "certificate": {"id": "b"}}]
    });
    let fb = fallback.clone();
    let gw = tls_gateway(kong.clone(), move |c| {
        c.tls_cert = fb.cert_path.display().to_string();
        c.tls_key = fb.key_path.display().to_string();
    })
    .await;

    // curl verifies the name against the certificate's subjectAltName: each
    // host succeeds only if the gateway served that host's certificate.
    for host in [
        "a.example.com",
        "b.example.com",
        "b2.example.com",
        "x.wild.example.com",
        "dual.example.com",
    ] {
        let (code, status, body) =
            curl_https(&gw, host, "/users/1", &ca.cert_path, &["--http1.1"]).await;
        assert_eq!((code, status.as_str()), (0, "1.1 200"), "{host}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["headers"]["x-forwarded-proto"], "https", "{v}");
        assert_eq!(v["uri"], "/v1/1");
        // HTTP/2 by ALPN.
        let (code, status, _) =
            curl_https(&gw, host, "/users/2", &ca.cert_path, &["--http2"]).await;
        assert_eq!((code, status.as_str()), (0, "2 200"), "{host}");
    }
    // The wildcard covers one label only; other names get the default
    // certificate, which is not valid for them.
    let (code, _, _) = curl_https(&gw, "a.b.wild.example.com", "/users", &ca.cert_path, &[]).await;
    assert_eq!(code, 60, "curl: the certificate does not match the name");
    assert_eq!(
        s_client(gw.tls, "nobody.example.com", &[]).await,
        "subject=CN = default.test"
    );
    assert_eq!(
        s_client(gw.tls, "a.b.wild.example.com", &[]).await,
        "subject=CN = default.test"
    );
    // No SNI at all (curl sends none for an IP address): the default.
    let (code, out) = curl_raw(s(&[
        "-k",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("https://{}/users", gw.tls),
    ]))
    .await;
    assert_eq!((code, out.as_str()), (0, "200"));
    assert_eq!(
        s_client(gw.tls, "A.EXAMPLE.COM", &[]).await,
        "subject=CN = a.example.com"
    );
    // The alternate certificate goes to clients that cannot verify the main
    // one's key type.
    let tls12 = ["-tls1_2"];
    assert_eq!(
        s_client(
            gw.tls,
            "dual.example.com",
            &[&tls12[..], &["-sigalgs", "RSA-PSS+SHA256"]].concat()
        )
        .await,
        "subject=CN = dual-rsa"
    );
    assert_eq!(
        s_client(
            gw.tls,
            "dual.example.com",
            &[&tls12[..], &["-sigalgs", "ECDSA+SHA256"]].concat()
        )
        .await,
        "subject=CN = dual-ec"
    );
    assert_eq!(
        s_client(gw.tls, "dual.example.com", &[]).await,
        "subject=CN = dual-ec"
    );

    // GET /config shows the running flat document: snis are Kong's SNI
    // entities naming their certificate.
    bronze_runtime::install_crypto_provider();
    let current: serde_json::Value = reqwest::get(format!("http://{}/config", gw.admin))
        .await
        .expect("GET")
        .json()
        .await
        .expect("json");
    let snis = current["snis"].as_array().cloned().unwrap_or_default();
    assert!(
        snis.iter()
            .any(|s| s["name"] == "B.example.com" && s["certificate"]["id"] == "b"),
        "{current}"
    );
    assert!(
        current["certificates"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["id"] == "b")),
        "{current}"
    );

    // Without a default certificate an unknown SNI gets an alert, no
    // certificate.
    let gw = tls_gateway(kong, |_| {}).await;
    let (code, status, _) =
        curl_https(&gw, "nobody.example.com", "/users", &ca.cert_path, &[]).await;
    assert_eq!(
        (code, status.as_str()),
        (35, "0 000"),
        "curl: TLS handshake failed"
    );
    let out = s_client(gw.tls, "nobody.example.com", &[]).await;
    assert!(!out.starts_with("subject="), "{out}");
    assert!(out.contains("alert"), "{out}");
    let (code, _) = curl_raw(s(&["-k", &format!("https://{}/users", gw.tls)])).await;
    assert_eq!(code, 35, "no SNI, no default: the handshake fails");
    let (code, status, _) = curl_https(&gw, "a.example.com", "/users", &ca.cert_path, &[]).await;
    assert_eq!((code, status.as_str()), (0, "2 200"));
    // The plain listener still serves.
    let (code, out) = curl_raw(s(&[
        "-w",
        "%{http_code}",
        "-o",
        "/dev/null",
        &format!("http://{}/users", gw.addr),
    ]))
    .await;
    assert_eq!((code, out.as_str()), (0, "200"));
}

#[tokio::test]
async fn certificates_are_replaced_live_and_open_connections_keep_working() {
    use futures::{SinkExt, StreamExt};
    let backend = echo("a").await;
    let ws_backend = ws_echo().await;
    let pki = Pki::new();
    let (ca1, ca2) = (pki.ca("ca1"), pki.ca("ca2"));
    let old = pki.leaf(&ca1, "a-old", &["a.example.com"], false);
    let new = pki.leaf(&ca2, "a-new", &["a.example.com"], false);
    let other = pki.leaf(&ca2, "b", &["b.example.com"], false);
    let config = |cert: &Issued| {
        serde_json::json!({
            "_format_version": "3.0",
            "services": [
                echo_service(backend),
                {"name": "ws", "url": format!("http://{ws_backend}"),
                 "routes": [{"name": "ws", "paths": ["/ws"], "strip_path": false}]}
            ],
            "certificates": [{"cert": cert.cert, "key": cert.key, "snis": ["a.example.com"]}]
        })
    };
    let gw = tls_gateway(config(&old), |_| {}).await;

    // A keep-alive HTTP/1.1 connection and a WebSocket, both over TLS,
    // opened with the old certificate.
    let (stream, leaf) = tls_connect(gw.tls, "a.example.com", &[&ca1, &ca2]).await;
    assert_eq!(leaf, der(&old));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1.1 over TLS");
    tokio::spawn(conn);
    let get = |path: &str| {
        hyper::Request::get(path)
            .header("host", "a.example.com")
            .body(Empty::<Bytes>::new())
            .expect("request")
    };
    let r = sender
        .send_request(get("/users/before"))
        .await
        .expect("GET");
    assert_eq!(r.status(), 200);
    let body = r.into_body().collect().await.expect("body").to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["headers"]["x-forwarded-proto"], "https");

    let (stream, _) = tls_connect(gw.tls, "a.example.com", &[&ca1]).await;
    let (mut ws, resp) = tokio_tungstenite::client_async("wss://a.example.com/ws/chat", stream)
        .await
        .expect("WebSocket over TLS");
    assert_eq!(resp.status(), 101);
    ws.send("one".into()).await.expect("send");
    assert_eq!(
        ws.next()
            .await
            .expect("reply")
            .expect("frame")
            .to_text()
            .expect("text"),
        "echo: one"
    );

    // Replace the certificate.
    bronze_runtime::install_crypto_provider();
    let client = reqwest::Client::new();
    let admin = format!("http://{}/config", gw.admin);
    let r = client
        .post(&admin)
        .body(config(&new).to_string())
        .send()
        .await
        .expect("POST /config");
    assert_eq!(r.status(), 201);

    // New handshakes get the new certificate: curl trusts ca2 now, not ca1.
    let (_, leaf) = tls_connect(gw.tls, "a.example.com", &[&ca1, &ca2]).await;
    assert_eq!(leaf, der(&new));
    let (code, status, _) = curl_https(&gw, "a.example.com", "/users", &ca2.cert_path, &[]).await;
    assert_eq!((code, status.as_str()), (0, "2 200"));
    let (code, _, _) = curl_https(&gw, "a.example.com", "/users", &ca1.cert_path, &[]).await;
    assert_eq!(code, 60, "curl: the old CA no longer verifies");

    // The connections opened before keep working on the same connection.
    let r = sender
        .send_request(get("/users/after"))
        .await
        .expect("GET on the old connection");
    assert_eq!(r.status(), 200);
    let body = r.into_body().collect().await.expect("body").to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["uri"], "/v1/after");
    ws.send("two".into()).await.expect("send");
    assert_eq!(
        ws.next()
            .await
            .expect("reply")
            .expect("frame")
            .to_text()
            .expect("text"),
        "echo: two"
    );

    // Bad certificates: 400 naming the field, and nothing changes.
    let swapped_pair = {
        let mut c = config(&new);
        c["certificates"][0]["key"] = other.key.clone().into();
        c
    };
    let garbage = {
        let mut c = config(&new);
        c["certificates"][0]["cert"] =
            "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n".into();
        c
    };
    let no_pem = {
        let mut c = config(&new);
        c["certificates"][0]["cert"] = "hello".into();
        c
    };
    let no_key = {
        let mut c = config(&new);
        c["certificates"][0]["key"] = "hello".into();
        c
    };
    let duplicate = {
        let mut c = config(&new);
        c["certificates"]
            .as_array_mut()
            .expect("array")
            .push(serde_json::json!({"cert": other.cert, "key": other.key,
                                      "snis": ["b.example.com", "A.example.com"]}));
        c
    };
    let bad_name = {
        let mut c = config(&new);
        c["certificates"][0]["snis"] = serde_json::json!([{"name": "a.*.example.com"}]);
        c
    };
    let bad_sni_type = {
        let mut c = config(&new);
        c["certificates"][0]["snis"] = serde_json::json!([42]);
        c
    };
    let alt_without_key = {
        let mut c = config(&new);
        c["certificates"][0]["cert_alt"] = other.cert.clone().into();
        c
    };
    let alt_same_type = {
        let mut c = config(&new);
        c["certificates"][0]["cert_alt"] = other.cert.clone().into();
        c["certificates"][0]["key_alt"] = other.key.clone().into();
        c
    };
    let bad_redirect = {
        let mut c = config(&new);
        c["services"][0]["routes"][1]["https_redirect_status_code"] = 303.into();
        c
    };
    let unknown_ref = {
        let mut c = config(&new);
        c["snis"] = serde_json::json!([{"name": "z.example.com", "certificate": "nope"}]);
        c
    };
    let top_duplicate = {
        let mut c = config(&new);
        c["certificates"][0]["id"] = "x".into();
        c["snis"] = serde_json::json!([{"name": "A.example.com", "certificate": {"id": "x"}}]);
        c
    };
    for (doc, field, says) in [
        (unknown_ref, "snis[0].certificate", "expected the id"),
        (
            top_duplicate,
            "snis[0].name",
            "already given by certificates[0].snis[0]",
        ),
        (
            swapped_pair,
            "certificates[0].key",
            "certificate does not match key",
        ),
        (garbage, "certificates[0].cert", "PEM"),
        (no_pem, "certificates[0].cert", "found none"),
        (no_key, "certificates[0].key", "PEM private key"),
        (duplicate, "certificates[1].snis[1]", "certificates[0]"),
        (bad_name, "certificates[0].snis[0]", "expected a host name"),
        (bad_sni_type, "certificates[0].snis[0]", "server name"),
        (alt_without_key, "certificates[0].key_alt", "required"),
        (alt_same_type, "certificates[0].cert_alt", "different type"),
        (
            bad_redirect,
            "services[0].routes[1].https_redirect_status_code",
            "426",
        ),
    ] {
        let r = client
            .post(&admin)
            .body(doc.to_string())
            .send()
            .await
            .expect("POST");
        assert_eq!(r.status(), 400, "{field}");
        let v: serde_json::Value = r.json().await.expect("json");
        assert!(
            v["fields"][field]
                .as_str()
                .is_some_and(|m| m.contains(says)),
            "{field}: {v}"
        );
        assert_eq!(v["name"], "invalid declarative configuration");
    }
    let (_, leaf) = tls_connect(gw.tls, "a.example.com", &[&ca1, &ca2]).await;
    assert_eq!(
        leaf,
        der(&new),
        "a refused configuration changed the certificates"
    );
    let current: serde_json::Value = client
        .get(&admin)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("json");
    assert_eq!(current["certificates"][0]["cert"], new.cert);
    assert_eq!(current["certificates"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn https_only_routes_refuse_plain_http_as_kong_does() {
    let backend = echo("a").await;
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let a = pki.leaf(&ca, "a.example.com", &["a.example.com"], false);
    let gw = tls_gateway(
        serde_json::json!({
            "_format_version": "3.0",
            "services": [echo_service(backend)],
            "certificates": [{"cert": a.cert, "key": a.key, "snis": ["a.example.com"]}]
        }),
        |_| {},
    )
    .await;
    let plain = format!("http://{}", gw.addr);

    // Kong's 426, with its body and Upgrade headers.
    let (code, out) = curl_raw(s(&["-i", &format!("{plain}/secure/x")])).await;
    assert_eq!(code, 0);
    let (head, body) = out.split_once("\r\n\r\n").expect("head and body");
    assert!(head.starts_with("HTTP/1.1 426"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("\r\nupgrade: tls/1.2, http/1.1"), "{head}");
    assert!(lower.contains("\r\nconnection: upgrade"), "{head}");
    assert_eq!(body, r#"{"message":"Please use HTTPS protocol"}"#);
    // Over h2c too (without HTTP/1.1's connection headers).
    let (code, out) = curl_raw(s(&[
        "--http2-prior-knowledge",
        "-w",
        "\n%{http_code}",
        &format!("{plain}/secure/x"),
    ]))
    .await;
    assert_eq!(
        (code, out.as_str()),
        (0, "{\"message\":\"Please use HTTPS protocol\"}\n426")
    );

    // https_redirect_status_code 301: a redirect to https, without the port.
    let (_, out) = curl_raw(s(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
        "-H",
        "Host: a.example.com:8000",
        &format!("{plain}/moved/y?q=1"),
    ]))
    .await;
    assert_eq!(out, "301 https://a.example.com/moved/y?q=1");

    // Routes that allow http still serve it; over TLS all three serve.
    let (_, out) = curl_raw(s(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("{plain}/both"),
    ]))
    .await;
    assert_eq!(out, "200");
    let (_, out) = curl_raw(s(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("{plain}/users"),
    ]))
    .await;
    assert_eq!(out, "200");
    for path in ["/secure/x", "/moved/y", "/both"] {
        let (code, status, body) = curl_https(&gw, "a.example.com", path, &ca.cert_path, &[]).await;
        assert_eq!((code, status.as_str()), (0, "2 200"), "{path}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["headers"]["x-forwarded-proto"], "https");
    }
}

/// Behind a load balancer that terminates TLS: `trusted_ips` (Kong's)
/// decides whose X-Forwarded-Proto, -Host and client address (from
/// `real_ip_header`) are believed, over both proxy paths (HTTP/1.1, h2c).
#[tokio::test]
async fn forwarded_headers_and_the_client_address_are_taken_only_from_trusted_peers() {
    let backend = echo("a").await;
    let mut services = vec![echo_service(backend)];
    services.push(
        serde_json::json!({"name": "guarded", "url": format!("http://{backend}"),
        "routes": [{"name": "guarded", "paths": ["/guarded"]}],
        "plugins": [{"name": "ip-restriction", "config": {"deny": ["203.0.113.0/24"]}}]}),
    );
    let doc = serde_json::json!({"_format_version": "3.0", "services": services});
    // What a balancer at 10.1.2.3 in front of a client at 203.0.113.9
    // would send (curl connects from 127.0.0.1).
    let lb = [
        "-H",
        "X-Forwarded-Proto: https",
        "-H",
        "X-Forwarded-Host: shop.example.com",
        "-H",
        "X-Forwarded-For: 203.0.113.9, 10.1.2.3",
    ];
    let trusting = gateway_with(doc.clone(), |c| {
        c.trusted_ips = "10.0.0.0/8, 127.0.0.1".into();
        c.real_ip_header = "X-Forwarded-For".into();
        c.real_ip_recursive = true;
    })
    .await;
    let other = gateway_with(doc, |c| c.trusted_ips = "10.0.0.0/8".into()).await;
    for h2 in [false, true] {
        let get = |gw: &Gw, path: &str| {
            let mut args = s(&lb);
            if h2 {
                args.push("--http2-prior-knowledge".into());
            }
            args.push(format!("http://{}{path}", gw.addr));
            async move { curl(args).await }
        };
        let (code, body) = get(&trusting, "/users").await;
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        let h = &v["headers"];
        assert_eq!(h["x-forwarded-proto"], "https", "h2 {h2}: {v}");
        assert_eq!(h["x-forwarded-host"], "shop.example.com", "h2 {h2}: {v}");
        // The rightmost address not trusted: the client behind the balancer.
        assert_eq!(h["x-real-ip"], "203.0.113.9", "h2 {h2}: {v}");
        assert_eq!(
            h["x-forwarded-for"], "203.0.113.9, 10.1.2.3, 127.0.0.1",
            "h2 {h2}: {v}"
        );
        // The balancer's word that the client used https opens https-only
        // routes; plugins see the client's address.
        let (code, body) = get(&trusting, "/secure").await;
        assert_eq!(code, 200, "h2 {h2}: {body}");
        let (code, body) = get(&trusting, "/guarded").await;
        assert_eq!(code, 403, "h2 {h2}: {body}");

        let (code, body) = get(&other, "/users").await;
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        let h = &v["headers"];
        assert_eq!(h["x-forwarded-proto"], "http", "h2 {h2}: {v}");
        assert_eq!(
            h["x-forwarded-host"],
            other.addr.to_string(),
            "h2 {h2}: {v}"
        );
        assert_eq!(h["x-real-ip"], "127.0.0.1", "h2 {h2}: {v}");
        let (code, body) = get(&other, "/secure").await;
        assert_eq!(code, 426, "h2 {h2}: {body}");
        let (code, body) = get(&other, "/guarded").await;
        assert_eq!(code, 200, "h2 {h2}: {body}");
    }
    // No Host (HTTP/1.0, on the general path): no X-Forwarded-Host, and an
    // untrusted peer's own does not pass either.
    let (code, body) = curl(s(&[
        "--http1.0",
        "-H",
        "Host:",
        "-H",
        "X-Forwarded-Host: shop.example.com",
        &format!("http://{}/users", other.addr),
    ]))
    .await;
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert!(v["headers"].get("x-forwarded-host").is_none(), "{v}");
    assert_eq!(v["headers"]["x-forwarded-proto"], "http", "{v}");
    // Without the headers, even a trusted peer's plain request is plain,
    // and the client is the peer.
    let (code, _) = curl(s(&[&format!("http://{}/secure", trusting.addr)])).await;
    assert_eq!(code, 426);
    let (code, body) = curl(s(&[&format!("http://{}/users", trusting.addr)])).await;
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["headers"]["x-real-ip"], "127.0.0.1", "{v}");
    for (tune, field) in [
        (
            &(|c: &mut Config| c.trusted_ips = "10.0.0.0/33".into()) as &dyn Fn(&mut Config),
            "trusted_ips",
        ),
        (
            &|c: &mut Config| c.real_ip_header = "X Real IP".into(),
            "real_ip_header",
        ),
    ] {
        let mut config = Config::ephemeral();
        tune(&mut config);
        let e = config.validate().expect_err("refused").to_string();
        assert!(e.contains(field), "{e}");
    }
}

/// A private CA, and a gateway in front of an echo backend ("a") that
/// terminates TLS with the CA's certificate for backend.test, whatever the
/// SNI.
async fn terminating_backend(pki: &Pki) -> (Issued, TlsGw) {
    let ca = pki.ca("upstream-ca");
    let leaf = pki.leaf(&ca, "backend.test", &["backend.test"], false);
    let backend = echo("a").await;
    let gw = tls_gateway(
        serde_json::json!({"_format_version": "3.0", "services": [echo_service(backend)]}),
        |c| {
            c.tls_cert = leaf.cert_path.display().to_string();
            c.tls_key = leaf.key_path.display().to_string();
        },
    )
    .await;
    (ca, gw)
}

/// Active checks of TLS upstreams (`https`, with or without verifying the
/// certificate) and plain TCP checks, against a second gateway
/// terminating TLS (a certificate for backend.test from a private CA) and
/// a port nothing listens on.
#[tokio::test]
async fn https_and_tcp_active_checks_judge_targets() {
    use super::balancing::{admin_get, client, dead_port, health_of};
    let pki = Pki::new();
    let (ca, terminating) = terminating_backend(&pki).await;
    let (up, down) = (terminating.tls, dead_port());
    let checked = |name: &str, active: serde_json::Value| {
        let mut active = active;
        active["http_path"] = "/users".into();
        active["timeout"] = 1.into();
        active["healthy"] = serde_json::json!({"interval": 0.1, "successes": 1});
        active["unhealthy"] =
            serde_json::json!({"interval": 0.1, "tcp_failures": 1, "http_failures": 1});
        serde_json::json!({"name": name, "healthchecks": {"active": active},
            "targets": [{"target": up.to_string()}, {"target": down.to_string()}]})
    };
    let doc = serde_json::json!({"_format_version": "3.0", "upstreams": [
        checked("verified", serde_json::json!({"type": "https", "https_sni": "backend.test"})),
        checked("wrong-name", serde_json::json!({"type": "https", "https_sni": "other.test"})),
        checked("unverified", serde_json::json!({"type": "https", "https_verify_certificate": false})),
        checked("plain-http", serde_json::json!({"type": "http"})),
        checked("tcp", serde_json::json!({"type": "tcp"}))]});
    let ca_file = ca.cert_path.display().to_string();
    let gw = gateway_with(doc, |c| c.upstream_ca_file = ca_file).await;
    let c = client();
    // Each upstream settles: (name, the TLS target's health).
    let want = [
        ("verified", "HEALTHY"),
        ("wrong-name", "UNHEALTHY"),
        ("unverified", "HEALTHY"),
        // HTTP to a TLS port gets no HTTP answer.
        ("plain-http", "UNHEALTHY"),
        ("tcp", "HEALTHY"),
    ];
    for (name, health) in want {
        let path = format!("/upstreams/{name}/health");
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        let v = loop {
            let (_, v) = admin_get(&c, &gw, &path).await;
            let settled = health_of(&v, up).as_deref() == Some(health)
                && health_of(&v, down).as_deref() == Some("UNHEALTHY");
            if settled || std::time::Instant::now() > deadline {
                break v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(health_of(&v, up).as_deref(), Some(health), "{name}: {v}");
        assert_eq!(
            health_of(&v, down).as_deref(),
            Some("UNHEALTHY"),
            "{name}: {v}"
        );
    }
}

/// Sends `bytes` (a request that asks to close) and returns the body of
/// the answer (empty when the gateway closed without one).
async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer).to_string();
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// Behind a TCP balancer (AWS NLB, HAProxy in TCP mode): a PROXY protocol
/// header (v1 or v2) before the client's bytes, plain or TLS, names the
/// client when the balancer is trusted.
#[tokio::test]
async fn a_tcp_balancer_names_the_client_with_the_proxy_protocol() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let leaf = pki.leaf(&ca, "a", &["a.example.com"], false);
    let backend = echo("a").await;
    let doc = serde_json::json!({"_format_version": "3.0", "services": [echo_service(backend)]});
    let start = |trusted: &'static str| {
        let (doc, cert, key) = (doc.clone(), leaf.cert_path.clone(), leaf.key_path.clone());
        async move {
            tls_gateway(doc, |c| {
                c.proxy_protocol = true;
                c.trusted_ips = trusted.into();
                c.tls_cert = cert.display().to_string();
                c.tls_key = key.display().to_string();
            })
            .await
        }
    };
    let gw = start("127.0.0.1").await;
    let request = b"GET /users HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let v1 = [
        &b"PROXY TCP4 203.0.113.9 10.0.0.1 56324 8000\r\n"[..],
        request,
    ]
    .concat();
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    v2.extend_from_slice(&[198, 51, 100, 7, 10, 0, 0, 1, 0xdc, 0x04, 0x1f, 0x40]);
    v2.extend_from_slice(request);
    for (header, client) in [(&v1, "203.0.113.9"), (&v2, "198.51.100.7")] {
        let body = raw_exchange(gw.addr, header).await;
        let v: serde_json::Value = serde_json::from_str(&body).expect("echo JSON");
        assert_eq!(v["headers"]["x-real-ip"], client, "{v}");
        assert_eq!(v["headers"]["x-forwarded-for"], client, "{v}");
    }
    // Before a TLS handshake too (curl sends a v1 header of its own).
    let (code, status, body) = curl_https(
        &gw,
        "a.example.com",
        "/users",
        &ca.cert_path,
        &["--haproxy-protocol"],
    )
    .await;
    assert_eq!((code, status.as_str()), (0, "2 200"), "{body}");
    // A connection without the header is closed unanswered.
    assert_eq!(raw_exchange(gw.addr, request).await, "");
    let (code, _) = curl_raw(s(&[&format!("http://{}/users", gw.addr)])).await;
    assert_ne!(code, 0, "answered without a PROXY header");
    // From a balancer that is not trusted, the header is read but not
    // believed.
    let untrusted = start("10.0.0.0/8").await;
    let body = raw_exchange(untrusted.addr, &v1).await;
    let v: serde_json::Value = serde_json::from_str(&body).expect("echo JSON");
    assert_eq!(v["headers"]["x-real-ip"], "127.0.0.1", "{v}");
}

#[tokio::test]
async fn a_client_that_never_finishes_its_handshake_is_dropped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = tls_gateway(serde_json::json!({"_format_version": "3.0"}), |c| {
        c.header_read_timeout = Duration::from_millis(500);
    })
    .await;
    // Half a TLS record header, then silence.
    let mut stream = tokio::net::TcpStream::connect(gw.tls)
        .await
        .expect("connect");
    stream.write_all(&[0x16, 0x03, 0x01]).await.expect("write");
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .expect("the gateway closes the connection, it does not wait forever");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(400), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
}

#[tokio::test]
async fn bad_tls_settings_are_refused_by_name() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let (a, b) = (
        pki.leaf(&ca, "a", &["a.example.com"], false),
        pki.leaf(&ca, "b", &["b.example.com"], false),
    );
    let bind = |tune: &dyn Fn(&mut Config)| {
        let mut config = Config::ephemeral();
        config.tls_addr = "127.0.0.1:0".into();
        tune(&mut config);
        async move {
            config.validate().map_err(|e| e.to_string())?;
            Server::bind(config)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    };
    let e = bind(&|c| c.tls_addr = "8443".into())
        .await
        .expect_err("refused");
    assert!(e.contains("tls_addr") && e.contains("8443"), "{e}");
    let e = bind(&|c| c.tls_cert = a.cert_path.display().to_string())
        .await
        .expect_err("refused");
    assert!(e.contains("tls_key"), "{e}");
    let missing = pki.path("missing.pem");
    let e = bind(&|c| {
        c.tls_cert = missing.clone();
        c.tls_key = a.key_path.display().to_string();
    })
    .await
    .expect_err("refused");
    assert!(e.contains("tls_cert") && e.contains("missing.pem"), "{e}");
    let e = bind(&|c| {
        c.tls_cert = a.cert_path.display().to_string();
        c.tls_key = b.key_path.display().to_string();
    })
    .await
    .expect_err("refused");
    assert!(
        e.contains("tls_key") && e.contains("certificate does not match key"),
        "{e}"
    );
    bind(&|c| {
        c.tls_cert = a.cert_path.display().to_string();
        c.tls_key = a.key_path.display().to_string();
    })
    .await
    .expect("a matching pair is accepted");
    // The CA file for TLS upstreams: missing, or without a certificate.
    let e = bind(&|c| c.upstream_ca_file = missing.clone())
        .await
        .expect_err("refused");
    assert!(
        e.contains("upstream_ca_file") && e.contains("missing.pem"),
        "{e}"
    );
    let e = bind(&|c| c.upstream_ca_file = a.key_path.display().to_string())
        .await
        .expect_err("refused");
    assert!(
        e.contains("upstream_ca_file") && e.contains("expected PEM certificates"),
        "{e}"
    );
}

/// `https` and `grpcs` services: the gateway under test speaks TLS to a
/// second gateway that terminates it (a certificate for backend.test from
/// a private CA, whatever the SNI) in front of the echo backend.
#[tokio::test]
async fn https_upstreams_are_verified_unless_told_not_to() {
    let pki = Pki::new();
    let (ca, terminating) = terminating_backend(&pki).await;
    // Upstream entities: the service's host is the name checked (and sent
    // as SNI); the target is where that name lives.
    let target = format!("127.0.0.1:{}", terminating.tls.port());
    let route = |name: &str| serde_json::json!([{"name": name, "paths": [format!("/{name}")]}]);
    let doc = serde_json::json!({"_format_version": "3.0",
        "upstreams": [
            {"name": "backend.test", "targets": [{"target": target}]},
            {"name": "other.test", "targets": [{"target": target}]}],
        "services": [
            {"name": "verified", "url": "https://backend.test/users", "routes": route("verified")},
            {"name": "h2", "url": "grpcs://backend.test/users", "routes": route("h2")},
            {"name": "wrong-name", "url": "https://other.test/users", "routes": route("wrong-name")},
            {"name": "unverified", "url": "https://other.test/users", "tls_verify": false,
             "routes": route("unverified")}]});
    let ca_file = ca.cert_path.display().to_string();
    let gw = gateway_with(doc.clone(), |c| c.upstream_ca_file = ca_file).await;
    let get = |gw: &Gw, path: &str| {
        let url = format!("http://{}{path}", gw.addr);
        async move { curl(s(&[&url])).await }
    };
    for path in ["/verified", "/h2", "/unverified"] {
        let (code, body) = get(&gw, path).await;
        assert_eq!(code, 200, "{path}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("echo JSON");
        assert_eq!(v["backend"], "a", "{path}: {v}");
        // Set by the terminating gateway: the hop was TLS.
        assert_eq!(v["headers"]["x-forwarded-proto"], "https", "{path}: {v}");
    }
    // A certificate for another name: refused, as Kong's bad-gateway answer.
    let (code, body) = get(&gw, "/wrong-name").await;
    assert_eq!(code, 502, "{body}");
    // Without the private CA nothing it signed is trusted.
    let untrusting = gateway_with(doc, |_| {}).await;
    let (code, body) = get(&untrusting, "/verified").await;
    assert_eq!(code, 502, "{body}");
    let (code, _) = get(&untrusting, "/unverified").await;
    assert_eq!(code, 200);
}

/// curl against the admin API with a JSON or form body: status and JSON.
async fn admin_call(
    gw: &TlsGw,
    method: &str,
    path: &str,
    args: &[&str],
) -> (u16, serde_json::Value) {
    let mut all = s(&["-X", method]);
    all.extend(s(args));
    all.push(format!("http://{}{path}", gw.admin));
    let (code, body) = super::curl(all).await;
    (
        code,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_and_snis_created_through_the_admin_api_are_served_at_once() {
    let backend = echo("a").await;
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let a = pki.leaf(&ca, "a", &["a.example.com"], false);
    let b = pki.leaf(&ca, "b", &["b.example.com"], true);
    let gw = tls_gateway(
        serde_json::json!({"_format_version": "3.0", "services": [echo_service(backend)]}),
        |_| {},
    )
    .await;
    // No certificate yet: the handshake fails.
    let (code, _, _) = curl_https(&gw, "a.example.com", "/users", &ca.cert_path, &[]).await;
    assert_ne!(code, 0, "no certificate for a.example.com yet");

    // Kong's sugar: `snis` on the certificate.
    let cert = serde_json::json!({"cert": a.cert, "key": a.key, "snis": ["a.example.com"]});
    let (code, created) = admin_call(
        &gw,
        "POST",
        "/certificates",
        &[
            "-H",
            "Content-Type: application/json",
            "-d",
            &cert.to_string(),
        ],
    )
    .await;
    assert_eq!(code, 201, "{created}");
    let (code, status, body) =
        curl_https(&gw, "a.example.com", "/users/x", &ca.cert_path, &[]).await;
    assert_eq!((code, status.as_str()), (0, "2 200"), "{body}");
    assert_eq!(
        s_client(gw.tls, "a.example.com", &[]).await,
        "subject=CN = a"
    );
    let (code, got) = admin_call(
        &gw,
        "GET",
        &format!(
            "/certificates/{}",
            created["id"].as_str().unwrap_or_default()
        ),
        &[],
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(got["snis"], serde_json::json!(["a.example.com"]), "{got}");

    // A second certificate, its name given as an SNI entity (form body).
    let cert = serde_json::json!({"cert": b.cert, "key": b.key});
    let (code, second) = admin_call(
        &gw,
        "POST",
        "/certificates",
        &[
            "-H",
            "Content-Type: application/json",
            "-d",
            &cert.to_string(),
        ],
    )
    .await;
    assert_eq!(code, 201, "{second}");
    let cert_id = format!(
        "certificate.id={}",
        second["id"].as_str().unwrap_or_default()
    );
    let (code, sni) = admin_call(
        &gw,
        "POST",
        "/snis",
        &["-d", "name=b.example.com", "-d", &cert_id],
    )
    .await;
    assert_eq!(code, 201, "{sni}");
    let (code, status, _) = curl_https(&gw, "b.example.com", "/users", &ca.cert_path, &[]).await;
    assert_eq!((code, status.as_str()), (0, "2 200"));
    assert_eq!(
        s_client(gw.tls, "b.example.com", &[]).await,
        "subject=CN = b"
    );
    let (_, snis) = admin_call(&gw, "GET", "/snis", &[]).await;
    let names: Vec<&str> = snis["data"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["name"].as_str()).collect())
        .unwrap_or_default();
    assert!(names.contains(&"b.example.com"), "{snis}");
    // The sugar made an SNI entity too, as in Kong.
    assert!(names.contains(&"a.example.com"), "{snis}");
    let second_id = second["id"].as_str().unwrap_or_default();
    let (_, got) = admin_call(&gw, "GET", &format!("/certificates/{second_id}"), &[]).await;
    assert_eq!(got["snis"], serde_json::json!(["b.example.com"]), "{got}");

    // A name a certificate already has is refused and changes nothing.
    let (code, body) = admin_call(
        &gw,
        "POST",
        "/snis",
        &["-d", "name=a.example.com", "-d", &cert_id],
    )
    .await;
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["name"], "unique constraint violation", "{body}");
    assert_eq!(
        s_client(gw.tls, "a.example.com", &[]).await,
        "subject=CN = a"
    );
    // A name taken twice is refused and changes nothing.
    let (code, body) = admin_call(
        &gw,
        "POST",
        "/snis",
        &["-d", "name=b.example.com", "-d", &cert_id],
    )
    .await;
    assert_eq!(code, 409, "{body}");
    // Deleting the SNI stops serving b's certificate for that name.
    let (code, _) = admin_call(&gw, "DELETE", "/snis/b.example.com", &[]).await;
    assert_eq!(code, 204);
    let (code, _, _) = curl_https(&gw, "b.example.com", "/users", &ca.cert_path, &[]).await;
    assert_ne!(code, 0, "b.example.com has no certificate any more");
    let (code, status, _) = curl_https(&gw, "a.example.com", "/users", &ca.cert_path, &[]).await;
    assert_eq!((code, status.as_str()), (0, "2 200"));

    // PATCH with `snis` replaces the certificate's names.
    let (code, got) = admin_call(
        &gw,
        "PATCH",
        &format!("/certificates/{second_id}"),
        &[
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"snis": ["b2.example.com"]}"#,
        ],
    )
    .await;
    assert_eq!(code, 200, "{got}");
    assert_eq!(got["snis"], serde_json::json!(["b2.example.com"]), "{got}");
    assert_eq!(
        s_client(gw.tls, "b2.example.com", &[]).await,
        "subject=CN = b"
    );
}

/// Kong's documented `curl -F` uses: a certificate uploaded as files
/// (`/certificates -F cert=@... -F key=@... -F snis[]=...`) and a
/// declarative file re-applied (`POST /config -F config=@kong.yml`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_forms_upload_certificates_and_configuration_files() {
    let backend = echo("a").await;
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let a = pki.leaf(&ca, "a", &["a.example.com"], false);
    let gw = tls_gateway(
        serde_json::json!({"_format_version": "3.0", "services": [echo_service(backend)]}),
        |_| {},
    )
    .await;
    let (code, created) = admin_call(
        &gw,
        "POST",
        "/certificates",
        &[
            "-F",
            &format!("cert=@{}", a.cert_path.display()),
            "-F",
            &format!("key=@{}", a.key_path.display()),
            "-F",
            "snis[]=a.example.com",
            "-F",
            "tags[]=uploaded",
        ],
    )
    .await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(
        created["tags"],
        serde_json::json!(["uploaded"]),
        "{created}"
    );
    let (code, status, body) =
        curl_https(&gw, "a.example.com", "/users/x", &ca.cert_path, &[]).await;
    assert_eq!((code, status.as_str()), (0, "2 200"), "{body}");

    // A field the schema refuses is named, as with any other body.
    let (code, refused) = admin_call(
        &gw,
        "POST",
        "/services",
        &[
            "-F",
            "name=s2",
            "-F",
            "url=http://127.0.0.1:1",
            "-F",
            "retries=many",
        ],
    )
    .await;
    assert_eq!(code, 400, "{refused}");
    assert!(refused["fields"].get("retries").is_some(), "{refused}");

    // A broken multipart body: 400 saying so, nothing stored.
    let (code, refused) = admin_call(
        &gw,
        "POST",
        "/services",
        &[
            "-H",
            "Content-Type: multipart/form-data; boundary=XyZ",
            "--data-binary",
            "--XyZ\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\ncut-short",
        ],
    )
    .await;
    assert_eq!(code, 400, "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .is_some_and(|m| m.contains("multipart")),
        "{refused}"
    );
    let (_, services) = admin_call(&gw, "GET", "/services", &[]).await;
    assert_eq!(
        services["data"].as_array().map(Vec::len),
        Some(1),
        "{services}"
    );

    // The whole configuration as a YAML file, Kong's DB-less reload.
    let kong_yml = pki.path("kong.yml");
    std::fs::write(
        &kong_yml,
        format!(
            "_format_version: \"3.0\"\nservices:\n- name: files\n  url: http://{backend}/from-file\n  routes:\n  - name: files\n    paths: [/files]\n"
        ),
    )
    .expect("write kong.yml");
    let (code, applied) = admin_call(
        &gw,
        "POST",
        "/config",
        &["-F", &format!("config=@{kong_yml}")],
    )
    .await;
    assert_eq!(code, 201, "{applied}");
    let (code, body) = super::curl(s(&[&format!("http://{}/files/y", gw.addr)])).await;
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["uri"], "/from-file/y");
    let (code, _) = super::curl(s(&[&format!("http://{}/users/x", gw.addr)])).await;
    assert_eq!(code, 404, "the file replaced everything");
    // No `config` part: refused, the running configuration stays.
    let (code, refused) = admin_call(&gw, "POST", "/config", &["-F", "other=1"]).await;
    assert_eq!(code, 400, "{refused}");
    let (code, _) = super::curl(s(&[&format!("http://{}/files/y", gw.addr)])).await;
    assert_eq!(code, 200);
}

/// Kong's route `snis`: which route a request takes depends on the server
/// name its TLS client asked for, on both proxy paths (HTTP/1.1 and h2),
/// and routes with snis are made through the Admin API's forms too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_with_snis_answer_only_their_tls_server_names() {
    let (by_sni, other) = (echo("by-sni").await, echo("other").await);
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let cert = pki.leaf(
        &ca,
        "example",
        &["a.example.com", "b.example.com", "c.example.com"],
        false,
    );
    let gw = tls_gateway(
        serde_json::json!({"_format_version": "3.0",
            "certificates": [{"cert": cert.cert, "key": cert.key,
                "snis": ["a.example.com", "b.example.com", "c.example.com"]}],
            "services": [
                {"name": "by-sni", "url": format!("http://{by_sni}"), "routes": [
                    {"name": "by-sni", "paths": ["/"], "snis": ["a.example.com"],
                     "protocols": ["https"]}]},
                {"name": "other", "url": format!("http://{other}"), "routes": [
                    {"name": "other", "paths": ["/"]}]}]}),
        |_| {},
    )
    .await;
    let backend_for = |host: &'static str, h2: bool| {
        let gw = &gw;
        let ca = &ca;
        async move {
            let extra: &[&str] = if h2 { &["--http2"] } else { &["--http1.1"] };
            let (code, status, body) = curl_https(gw, host, "/x", &ca.cert_path, extra).await;
            assert_eq!(code, 0, "{host}: {status} {body}");
            let v: serde_json::Value = serde_json::from_str(&body).expect("json");
            (
                status,
                v["backend"].as_str().unwrap_or_default().to_string(),
            )
        }
    };
    for h2 in [false, true] {
        let version = if h2 { "2" } else { "1.1" };
        assert_eq!(
            backend_for("a.example.com", h2).await,
            (format!("{version} 200"), "by-sni".to_string())
        );
        assert_eq!(
            backend_for("b.example.com", h2).await,
            (format!("{version} 200"), "other".to_string())
        );
    }
    // Plain HTTP carries no server name, whatever its Host says.
    let (code, body) = super::curl(s(&[
        "-H",
        "Host: a.example.com",
        &format!("http://{}/x", gw.addr),
    ]))
    .await;
    assert_eq!(code, 200);
    assert!(body.contains("\"other\""), "{body}");

    // The Admin API, Kong-script style.
    let (code, route) = admin_call(
        &gw,
        "POST",
        "/services/by-sni/routes",
        &[
            "-d",
            "name=c",
            "-d",
            "paths[]=/",
            "-d",
            "snis[]=c.example.com",
            "-d",
            "protocols[]=https",
        ],
    )
    .await;
    assert_eq!(code, 201, "{route}");
    assert_eq!(
        route["snis"],
        serde_json::json!(["c.example.com"]),
        "{route}"
    );
    assert_eq!(backend_for("c.example.com", false).await.1, "by-sni");
    let (code, refused) = admin_call(
        &gw,
        "POST",
        "/services/by-sni/routes",
        &[
            "-d",
            "name=d",
            "-d",
            "snis[]=d.example.com",
            "-d",
            "protocols[]=http",
        ],
    )
    .await;
    assert_eq!(code, 400, "{refused}");
    assert!(refused["fields"]["snis"].is_string(), "{refused}");
}

/// tcp-log over TLS, to a collector with a certificate from a private CA:
/// Kong does not verify it, and neither does Bronze; `tls_sni` is sent.
#[tokio::test]
async fn tcp_log_speaks_tls_to_its_collector() {
    let pki = Pki::new();
    let ca = pki.ca("logs-ca");
    let leaf = pki.leaf(&ca, "logs.test", &["logs.test"], false);
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(
        vec![der(&leaf)],
        rustls_pki_types::PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).expect("key"),
    )
    .expect("server config");
    let (sink, got) =
        super::plugins::line_collector(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
            .await;
    let backend = echo("a").await;
    let gw = gateway_with(
        serde_json::json!({"_format_version": "3.0",
            "plugins": [{"name": "tcp-log", "config": {"host": "127.0.0.1", "port": sink.port(),
                "tls": true, "tls_sni": "logs.test"}}],
            "services": [echo_service(backend)]}),
        |_| {},
    )
    .await;
    let (code, _) = super::curl(s(&[&format!("http://{}/users/tls", gw.addr)])).await;
    assert_eq!(code, 200);
    let lines = got.wait_for(1).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["request"]["uri"], "/users/tls");
}

/// An HTTPS server that requires a client certificate from `client_ca`
/// (its own certificate is `server`): it answers the client
/// certificate's subject, as the mutual-TLS upstream of a service; and
/// how many requests came over a handshake with a client certificate.
async fn mtls_backend(
    server: &Issued,
    client_ca: &Issued,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der(client_ca)).expect("client CA");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .expect("client verifier");
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![der(server)],
            rustls_pki_types::PrivateKeyDer::from_pem_slice(server.key.as_bytes()).expect("key"),
        )
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let certified = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = certified.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let count = count.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let presented = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .map_or(0, <[CertificateDer<'_>]>::len);
                let service = hyper::service::service_fn(move |_req| {
                    if presented > 0 {
                        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(Bytes::from(format!(
                                "client certificates: {presented}"
                            ))),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, certified)
}

/// Kong's `client_certificate` and `ca_certificates` on a service: an
/// upstream that demands a client certificate gets the service's, and the
/// upstream's certificate is checked against the service's own CA (not
/// the system's roots, no `--upstream-ca-file`).
#[tokio::test]
async fn services_present_client_certificates_and_trust_their_own_cas() {
    let pki = Pki::new();
    let (server_ca, client_ca) = (pki.ca("server-ca"), pki.ca("client-ca"));
    let server = pki.leaf(&server_ca, "backend.test", &["backend.test"], false);
    let client = pki.issue(
        &client_ca,
        "gateway",
        &["gateway.test"],
        false,
        "clientAuth",
    );
    let (backend, certified) = mtls_backend(&server, &client_ca).await;
    let route = |name: &str| serde_json::json!([{"name": name, "paths": [format!("/{name}")]}]);
    let doc = serde_json::json!({"_format_version": "3.0",
        "certificates": [{"id": "4e3ad2e4-0bc4-4638-8e34-c84a417ba39b",
                          "cert": client.cert, "key": client.key}],
        "ca_certificates": [{"id": "9f3f1d6b-2a55-4f35-8a3b-7f1b1d1c9e21", "cert": server_ca.cert},
                            {"id": "other-ca", "cert": client_ca.cert}],
        "upstreams": [{"name": "backend.test", "targets": [{"target": backend.to_string()}]}],
        "services": [
            {"name": "mtls", "url": "https://backend.test/",
             "client_certificate": {"id": "4e3ad2e4-0bc4-4638-8e34-c84a417ba39b"},
             "ca_certificates": ["9f3f1d6b-2a55-4f35-8a3b-7f1b1d1c9e21"], "routes": route("mtls")},
            {"name": "no-client-cert", "url": "https://backend.test/",
             "ca_certificates": ["9f3f1d6b-2a55-4f35-8a3b-7f1b1d1c9e21"], "routes": route("no-client-cert")},
            {"name": "wrong-ca", "url": "https://backend.test/",
             "client_certificate": {"id": "4e3ad2e4-0bc4-4638-8e34-c84a417ba39b"},
             "ca_certificates": ["other-ca"], "routes": route("wrong-ca")}]});
    // A client certificate and no roots of its own: the gateway's roots,
    // `--upstream-ca-file` among them.
    let own_roots_not_given = gateway_with(
        serde_json::json!({"_format_version": "3.0",
            "certificates": doc["certificates"].clone(),
            "upstreams": doc["upstreams"].clone(),
            "services": [{"name": "mtls", "url": "https://backend.test/",
                "client_certificate": "4e3ad2e4-0bc4-4638-8e34-c84a417ba39b",
                "routes": route("mtls")}]}),
        |c| c.upstream_ca_file = server_ca.cert_path.display().to_string(),
    )
    .await;
    let (code, body) =
        super::curl(s(&[&format!("http://{}/mtls", own_roots_not_given.addr)])).await;
    assert_eq!((code, body.as_str()), (200, "client certificates: 1"));

    // The upstream's client certificate: shown by its active https checks
    // (the target stays HEALTHY only if the handshake succeeds) and by a
    // service that has none of its own.
    let checked = gateway_with(
        serde_json::json!({"_format_version": "3.0",
            "certificates": doc["certificates"].clone(),
            "upstreams": [{"name": "backend.test",
                "client_certificate": {"id": "4e3ad2e4-0bc4-4638-8e34-c84a417ba39b"},
                "targets": [{"target": backend.to_string()}],
                "healthchecks": {"active": {"type": "https", "https_sni": "backend.test",
                    "healthy": {"interval": 0.1, "successes": 1},
                    "unhealthy": {"interval": 0.1, "tcp_failures": 1, "timeouts": 1,
                                  "http_failures": 1}}}}],
            "services": [{"name": "mtls", "url": "https://backend.test/", "routes": route("mtls")}]}),
        |c| c.upstream_ca_file = server_ca.cert_path.display().to_string(),
    )
    .await;
    // Checked a few times (each check a request over a handshake with the
    // client certificate), and still healthy.
    let before = certified.load(std::sync::atomic::Ordering::SeqCst);
    super::eventually(
        Duration::from_secs(30),
        "three checks with the client certificate",
        || certified.load(std::sync::atomic::Ordering::SeqCst) >= before + 3,
    )
    .await;
    let health =
        super::balancing::health_becomes(&checked, "backend.test", backend, "HEALTHY").await;
    assert_eq!(
        super::balancing::health_of(&health, backend).as_deref(),
        Some("HEALTHY"),
        "{health}"
    );
    let (code, body) = super::curl(s(&[&format!("http://{}/mtls", checked.addr)])).await;
    assert_eq!((code, body.as_str()), (200, "client certificates: 1"));

    let gw = gateway_with(doc, |_| {}).await;
    let get = |path: &str| super::curl(s(&[&format!("http://{}{path}", gw.addr)]));
    let (code, body) = get("/mtls").await;
    assert_eq!((code, body.as_str()), (200, "client certificates: 1"));
    // Without a client certificate the upstream ends the handshake.
    let (code, body) = get("/no-client-cert").await;
    assert_eq!(code, 502, "{body}");
    // Trusting only the client CA, the server's certificate fails.
    let (code, body) = get("/wrong-ca").await;
    assert_eq!(code, 502, "{body}");

    // Through the Admin API, as Kong scripts do it.
    let tls_gw = TlsGw {
        addr: gw.addr,
        tls: gw.addr,
        admin: gw.admin,
        _gw: gw,
    };
    let (code, ca) = admin_call(
        &tls_gw,
        "POST",
        "/ca_certificates",
        &["-F", &format!("cert=@{}", server_ca.cert_path.display())],
    )
    .await;
    assert_eq!(code, 201, "{ca}");
    let ca_id = ca["id"].as_str().unwrap_or_default().to_string();
    let (code, svc) = admin_call(
        &tls_gw,
        "POST",
        "/services",
        &[
            "-d",
            "name=admin-made",
            "-d",
            "url=https://backend.test/",
            "-d",
            "client_certificate.id=4e3ad2e4-0bc4-4638-8e34-c84a417ba39b",
            "-d",
            &format!("ca_certificates[]={ca_id}"),
        ],
    )
    .await;
    assert_eq!(code, 201, "{svc}");
    let (code, _) = admin_call(
        &tls_gw,
        "POST",
        "/services/admin-made/routes",
        &["-d", "name=admin-made", "-d", "paths[]=/admin-made"],
    )
    .await;
    assert_eq!(code, 201);
    let (code, body) = super::curl(s(&[&format!("http://{}/admin-made", tls_gw.addr)])).await;
    assert_eq!((code, body.as_str()), (200, "client certificates: 1"));
    // A certificate a service presents cannot be deleted.
    let (code, refused) = admin_call(
        &tls_gw,
        "DELETE",
        "/certificates/4e3ad2e4-0bc4-4638-8e34-c84a417ba39b",
        &[],
    )
    .await;
    assert!(code == 400 || code == 409, "{code} {refused}");
    // Unknown ids, and TLS settings on a plain service, are named.
    for (form, field) in [
        (
            vec![
                "name=x1",
                "url=https://backend.test/",
                "ca_certificates[]=nope",
            ],
            "ca_certificates",
        ),
        (
            vec![
                "name=x2",
                "url=http://backend.test/",
                &format!("ca_certificates[]={ca_id}"),
            ],
            "ca_certificates",
        ),
        (
            vec!["name=x3", "url=https://backend.test/", "tls_verify_depth=2"],
            "tls_verify_depth",
        ),
    ] {
        let mut args = Vec::new();
        for f in &form {
            args.extend(["-d", f]);
        }
        let (code, refused) = admin_call(&tls_gw, "POST", "/services", &args).await;
        assert_eq!(code, 400, "{form:?}: {refused}");
        assert!(
            refused["fields"]
                .as_object()
                .is_some_and(|f| f.keys().any(|k| k.starts_with(field))),
            "{form:?}: {refused}"
        );
    }
}
