//! A registry in this process on port 0, and an HTTP client for it.

use std::net::SocketAddr;

use bronze_registry::{Config, Server};
use bronze_runtime::Shutdown;
use reqwest::{Method, Response};
use sha2::Digest as _;
use tokio::task::JoinHandle;

pub struct Reg {
    pub addr: SocketAddr,
    pub grpc: SocketAddr,
    pub root: tempfile::TempDir,
    pub client: reqwest::Client,
    shutdown: Shutdown,
    task: Option<JoinHandle<()>>,
}

impl Reg {
    pub async fn start() -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        Self::start_in(root).await
    }

    pub async fn start_in(root: tempfile::TempDir) -> Self {
        Self::start_with(root, |_| {}).await
    }

    /// Starts with the ephemeral configuration changed by `edit`.
    pub async fn start_with(root: tempfile::TempDir, edit: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config::ephemeral(&root.path().display().to_string());
        edit(&mut config);
        let server = Server::bind(config).await.expect("registry binds");
        let (addr, grpc) = (server.addr(), server.grpc_addr());
        let shutdown = Shutdown::new();
        let s = shutdown.clone();
        let task = tokio::spawn(async move { server.serve(s).await.expect("registry serves") });
        bronze_runtime::install_crypto_provider();
        Self {
            addr,
            grpc,
            root,
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            shutdown,
            task: Some(task),
        }
    }

    /// A client for a registry started elsewhere (`root` is a dummy).
    pub fn attach(addr: SocketAddr) -> Self {
        bronze_runtime::install_crypto_provider();
        Self {
            addr,
            grpc: addr,
            root: tempfile::tempdir().expect("tempdir"),
            client: reqwest::Client::new(),
            shutdown: Shutdown::new(),
            task: None,
        }
    }

    /// A client for the same registry that sends `name: value` with every
    /// request (credentials).
    pub fn with_header(&self, name: &str, value: &str) -> Self {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            reqwest::header::HeaderValue::from_str(value).expect("header value"),
        );
        let mut r = Self::attach(self.addr);
        r.client = reqwest::Client::builder()
            .default_headers(headers)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        r
    }

    /// Stops the server and hands back its storage directory.
    pub async fn stop(mut self) -> tempfile::TempDir {
        self.shutdown.trigger();
        if let Some(t) = self.task.take() {
            t.await.expect("registry task");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        std::mem::replace(&mut self.root, dir)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, self.url(path))
    }

    pub async fn get(&self, path: &str) -> Response {
        self.client.get(self.url(path)).send().await.expect("GET")
    }

    pub async fn head(&self, path: &str) -> Response {
        self.client.head(self.url(path)).send().await.expect("HEAD")
    }

    /// Pushes a blob with POST + PUT; returns its digest.
    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let digest = sha256(data);
        let r = self
            .client
            .post(self.url(&format!("/v2/{repo}/blobs/uploads/")))
            .send()
            .await
            .expect("POST");
        assert_eq!(r.status(), 202, "start upload");
        let location = r.headers()["location"]
            .to_str()
            .expect("location")
            .to_string();
        let sep = if location.contains('?') { '&' } else { '?' };
        let r = self
            .client
            .put(format!(
                "http://{}{location}{sep}digest={digest}",
                self.addr
            ))
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await
            .expect("PUT");
        assert_eq!(r.status(), 201, "finish upload");
        digest
    }

    /// Pushes an image manifest with one layer; returns (manifest digest, body).
    pub async fn push_image(&self, repo: &str, tag: &str, layer: &[u8]) -> (String, Vec<u8>) {
        let config = br#"{"architecture":"amd64","os":"linux"}"#;
        let config_digest = self.push_blob(repo, config).await;
        let layer_digest = self.push_blob(repo, layer).await;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len()}]
        });
        let body = serde_json::to_vec(&manifest).expect("json");
        let r = self
            .put_manifest(
                repo,
                tag,
                "application/vnd.oci.image.manifest.v1+json",
                &body,
            )
            .await;
        assert_eq!(r.status(), 201, "manifest PUT");
        (sha256(&body), body)
    }

    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Response {
        self.client
            .put(self.url(&format!("/v2/{repo}/manifests/{reference}")))
            .header("content-type", media_type)
            .body(body.to_vec())
            .send()
            .await
            .expect("PUT manifest")
    }
}

impl Drop for Reg {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

pub fn sha256(data: &[u8]) -> String {
    let h = sha2::Sha256::digest(data);
    format!(
        "sha256:{}",
        h.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// The error code of a spec error document.
pub async fn error_code(r: Response) -> String {
    let v: serde_json::Value = r.json().await.expect("error document");
    v["errors"][0]["code"].as_str().expect("code").to_string()
}
