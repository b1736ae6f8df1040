//! The HTTP API: OCI distribution-spec v1.1 and the Docker Registry v2
//! behaviour docker clients depend on. One dispatcher routes `/v2/...`
//! (repository names contain slashes, so the path is split by hand in
//! `reference::route`), each handler answers with the spec's headers and
//! error documents.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bronze_store::Op;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::json;

use crate::auth::{Auth, Identity, Mode, Need};
use crate::error::RegistryError;
use crate::events::{Action, Event, Events};
use crate::manifest::{self, MAX_MANIFEST, OCI_INDEX};
use crate::reference::{self, Digest, Name, Reference, Route};
use crate::storage::{
    self, ManifestMeta, NS_LINKS, NS_MANIFESTS, NS_REFERRERS, NS_REPOS, NS_TAGS, Storage,
    digest_of, key, prefix,
};

const API_VERSION: &str = "registry/2.0";
/// Page size when a listing asks for none.
const DEFAULT_PAGE: usize = 1000;
const MAX_PAGE: usize = 10_000;
/// About what one page of referrers may hold (clients take an index of up
/// to 4 MiB).
const REFERRERS_PAGE_BYTES: usize = 4 << 20;

#[derive(Clone)]
pub struct App {
    pub storage: Arc<Storage>,
    pub events: Events,
    /// Read by manifest PUTs and mounts across check and write; written by
    /// the garbage collector's sweep (see `gc`).
    pub gc_lock: Arc<tokio::sync::RwLock<()>>,
    pub auth: Arc<Auth>,
    /// Whether clients reach the API over TLS (for the token realm's URL).
    pub tls: bool,
}

type Result<T, E = RegistryError> = std::result::Result<T, E>;

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status(),
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            self.body(),
        )
            .into_response();
        r.headers_mut().insert(
            "Docker-Distribution-API-Version",
            HeaderValue::from_static(API_VERSION),
        );
        r
    }
}

fn params(req: &Request) -> Vec<(String, String)> {
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(req.uri())
        .map(|q| q.0)
        .unwrap_or_default()
}

fn param<'a>(p: &'a [(String, String)], k: &str) -> Option<&'a str> {
    p.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str())
}

fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn respond(status: StatusCode, headers: Vec<(&'static str, String)>, body: Body) -> Response {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        "Docker-Distribution-API-Version",
        HeaderValue::from_static(API_VERSION),
    );
    for (k, v) in headers {
        h.insert(k, hv(&v));
    }
    if !h.contains_key(header::CONTENT_LENGTH) && status != StatusCode::NO_CONTENT {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    }
    r
}

/// The single entry point for `/v2/...`.
pub async fn dispatch(State(app): State<App>, req: Request) -> Response {
    let route = match reference::route(req.uri().path()) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let method = req.method().clone();
    let mut p = params(&req);
    let headers = req.headers().clone();
    let path = req.uri().path().to_string();
    let needs = needs(&route, &method);
    let who = match app.auth.authorize(&headers, &needs, app.tls).await {
        Ok(who) => who,
        Err(denial) => {
            let challenge: Vec<_> = denial.headers().collect();
            let mut r = (denial.0.0, denial.0.1).into_response();
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            h.insert(
                "Docker-Distribution-API-Version",
                HeaderValue::from_static(API_VERSION),
            );
            h.extend(challenge);
            return r;
        }
    };
    // A mount from a repository the caller may not pull from is ignored:
    // the client uploads the blob instead (as distribution does).
    if let Some(from) = param(&p, "from")
        && !app
            .auth
            .permits(&headers, &who, &Need::Repo(from.to_string(), "pull"))
    {
        p.retain(|(k, _)| k != "mount" && k != "from");
    }
    let result = match (route, &method) {
        (Route::Base, &Method::GET | &Method::HEAD) => Ok(respond(
            StatusCode::OK,
            vec![
                ("content-type", "application/json".into()),
                ("content-length", "2".into()),
            ],
            if method == Method::HEAD {
                Body::empty()
            } else {
                Body::from("{}")
            },
        )),
        (Route::Catalog, &Method::GET) => app.catalog(&p).await,
        (Route::Tags(name), &Method::GET) => app.tags(&name, &p).await,
        (Route::Manifest(name, r), &Method::GET | &Method::HEAD) => {
            app.get_manifest(&name, &r, method == Method::HEAD).await
        }
        (Route::Manifest(name, r), &Method::PUT) => app.put_manifest(&name, &r, req).await,
        (Route::Manifest(name, r), &Method::DELETE) => app.delete_manifest(&name, &r).await,
        (Route::Blob(name, d), &Method::GET | &Method::HEAD) => {
            app.get_blob(&name, &d, &headers, method == Method::HEAD)
                .await
        }
        (Route::Blob(name, d), &Method::DELETE) => app.delete_blob(&name, &d).await,
        (Route::Uploads(name), &Method::POST) => app.start_upload(&name, &p, req).await,
        (Route::Upload(name, id), &Method::GET) => app.upload_status(&name, &id).await,
        (Route::Upload(name, id), &Method::PATCH) => app.patch_upload(&name, &id, req).await,
        (Route::Upload(name, id), &Method::PUT) => app.finish_upload(&name, &id, &p, req).await,
        (Route::Upload(name, id), &Method::DELETE) => app.cancel_upload(&name, &id).await,
        (Route::Referrers(name, d), &Method::GET) => app.referrers(&name, &d, &p).await,
        (_, m) => Err(RegistryError::Unsupported(format!("{m} on {path}"))),
    };
    let mut response = result.unwrap_or_else(IntoResponse::into_response);
    response.extensions_mut().insert(who);
    response
}

/// What a request on `route` needs to be allowed.
fn needs(route: &Route, method: &Method) -> Vec<Need> {
    let repo = |n: &Name, action| vec![Need::Repo(n.to_string(), action)];
    let write = *method == Method::PUT || *method == Method::POST || *method == Method::PATCH;
    match route {
        Route::Base => vec![Need::Login],
        Route::Catalog => vec![Need::Catalog],
        Route::Tags(n) | Route::Referrers(n, _) => repo(n, "pull"),
        Route::Manifest(n, _) | Route::Blob(n, _) if *method == Method::DELETE => repo(n, "delete"),
        Route::Manifest(n, _) if write => repo(n, "push"),
        Route::Manifest(n, _) | Route::Blob(n, _) => repo(n, "pull"),
        Route::Uploads(n) | Route::Upload(n, _) => repo(n, "push"),
    }
}

/// `/token`: the Docker token endpoint (token mode only). `GET` with
/// optional Basic credentials (none: an anonymous token), or `POST` with
/// an OAuth2 password or refresh-token grant. The token grants the
/// asked-for scopes the caller may have, and nothing else. With
/// `offline_token=true` (GET) or `access_type=offline` (POST) a user also
/// gets a refresh token, which `docker login` keeps instead of the
/// password; it lasts 90 days or until the user's password changes.
pub async fn token(State(app): State<App>, req: Request) -> Response {
    let oauth_error = |status: StatusCode, error: &str, description: String| {
        let body = json!({"error": error, "error_description": description}).to_string();
        json_body(status, Vec::new(), body, "application/json")
    };
    if app.auth.mode() != Mode::Token {
        return RegistryError::NotFound.into_response();
    }
    let mut fields = params(&req);
    let mut credentials = crate::auth::basic_credentials(req.headers());
    // Docker's offline token: a refresh token with the access token, which
    // `docker login` keeps instead of the password.
    let mut offline = param(&fields, "offline_token") == Some("true");
    let mut presented_refresh = None;
    if req.method() == Method::POST {
        let body = match axum::body::to_bytes(req.into_body(), 64 << 10).await {
            Ok(b) => b,
            Err(e) => {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    format!("body: {e}"),
                );
            }
        };
        let form: Vec<(String, String)> = match serde_urlencoded::from_bytes(&body) {
            Ok(f) => f,
            Err(_) => {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "expected an application/x-www-form-urlencoded body".into(),
                );
            }
        };
        match param(&form, "grant_type") {
            Some("password") => match (param(&form, "username"), param(&form, "password")) {
                (Some(u), Some(pw)) => {
                    credentials = Some((u.to_string(), pw.to_string()));
                    offline = param(&form, "access_type") == Some("offline");
                }
                _ => {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "username and password: expected both".into(),
                    );
                }
            },
            Some("refresh_token") => match param(&form, "refresh_token") {
                Some(t) if !t.is_empty() => presented_refresh = Some(t.to_string()),
                _ => {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "refresh_token: expected the refresh token".into(),
                    );
                }
            },
            other => {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "unsupported_grant_type",
                    format!("grant_type {other:?}: expected \"password\" or \"refresh_token\""),
                );
            }
        }
        fields = form;
    } else if req.method() != Method::GET {
        return RegistryError::Unsupported(format!("{} on /token", req.method())).into_response();
    }
    if let Some(service) = param(&fields, "service")
        && service != app.auth.service()
    {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("service {service:?}: expected {:?}", app.auth.service()),
        );
    }
    let who = match (presented_refresh.as_deref(), credentials) {
        (Some(refresh), _) => match app.auth.redeem_refresh(refresh) {
            Some(who) => who,
            None => {
                tracing::info!("token refused: refresh token expired, revoked or not from here");
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "refresh_token: expired, revoked (the password changed) or not issued here"
                        .into(),
                );
            }
        },
        (None, Some((user, password))) => {
            if !app.auth.verify_password(&user, &password).await {
                tracing::info!(user, "token refused: wrong user name or password");
                return RegistryError::Unauthorized.into_response();
            }
            Identity::User(user)
        }
        (None, None) => Identity::Anonymous,
    };
    let scopes: Vec<String> = fields
        .iter()
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v.clone())
        .collect();
    let (token, granted) = app.auth.issue(&who, &scopes);
    tracing::debug!(user = who.name(), ?granted, "token issued");
    let mut body = json!({
        "token": token,
        "access_token": token,
        "expires_in": app.auth.token_ttl().as_secs(),
        "issued_at": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    });
    // A refresh grant gets its token back; an offline request a new one.
    let refresh = match (&presented_refresh, &who) {
        (Some(t), _) => Some(t.clone()),
        (None, Identity::User(user)) if offline => app.auth.issue_refresh(user),
        _ => None,
    };
    if let Some(t) = refresh {
        body["refresh_token"] = t.into();
    }
    let body = body.to_string();
    let mut r = json_body(StatusCode::OK, Vec::new(), body, "application/json");
    r.extensions_mut().insert(who);
    r
}

/// `bytes=<a>-<b>` (also `<a>-` and `-<n>`) against a blob of `size`.
fn parse_range(h: &str, size: u64) -> Option<(u64, u64)> {
    let spec = h.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            if n == 0 {
                return None;
            }
            (size.saturating_sub(n), size.checked_sub(1)?)
        }
        (a, "") => (a.parse().ok()?, size.checked_sub(1)?),
        (a, b) => (
            a.parse().ok()?,
            b.parse::<u64>().ok()?.min(size.checked_sub(1)?),
        ),
    };
    (start <= end && start < size).then_some((start, end))
}

/// `Content-Range: <start>-<end>` of an upload chunk.
fn parse_content_range(h: &str) -> Option<(u64, u64)> {
    let h = h
        .trim()
        .trim_start_matches("bytes ")
        .trim_start_matches("bytes=");
    let (a, b) = h.split_once('-')?;
    let b = b.split('/').next()?;
    let (a, b): (u64, u64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (a <= b).then_some((a, b))
}

fn page_size(p: &[(String, String)]) -> Result<usize> {
    match param(p, "n") {
        None | Some("") => Ok(DEFAULT_PAGE),
        Some(n) => n
            .parse::<usize>()
            .map(|n| n.min(MAX_PAGE))
            .map_err(|_| RegistryError::Unsupported(format!("n={n:?}: expected a number"))),
    }
}

fn json_body(
    status: StatusCode,
    mut headers: Vec<(&'static str, String)>,
    body: String,
    content_type: &str,
) -> Response {
    headers.push(("content-type", content_type.to_string()));
    headers.push(("content-length", body.len().to_string()));
    respond(status, headers, Body::from(body))
}

impl App {
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Storage) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let s = self.storage.clone();
        tokio::task::spawn_blocking(move || f(&s))
            .await
            .map_err(|e| RegistryError::Internal(e.to_string()))?
    }

    async fn repo_exists(&self, name: &Name) -> Result<bool> {
        let k = name.to_string();
        self.blocking(move |s| Ok(s.meta.get(NS_REPOS, &k)?.is_some()))
            .await
    }

    async fn catalog(&self, p: &[(String, String)]) -> Result<Response> {
        let n = page_size(p)?;
        let last = param(p, "last").map(str::to_string);
        let page = self
            .blocking(move |s| Ok(s.meta.scan(NS_REPOS, "", last.as_deref(), n + 1)?))
            .await?;
        let mut repos: Vec<String> = page.into_iter().map(|(k, _)| k).collect();
        let mut headers = Vec::new();
        if repos.len() > n {
            repos.truncate(n);
            if let Some(l) = repos.last() {
                headers.push((
                    "link",
                    format!("</v2/_catalog?n={n}&last={l}>; rel=\"next\""),
                ));
            }
        }
        Ok(json_body(
            StatusCode::OK,
            headers,
            json!({"repositories": repos}).to_string(),
            "application/json",
        ))
    }

    async fn tags(&self, name: &Name, p: &[(String, String)]) -> Result<Response> {
        if !self.repo_exists(name).await? {
            return Err(RegistryError::NameUnknown(name.to_string()));
        }
        let n = page_size(p)?;
        let pre = prefix(name);
        let after = param(p, "last").map(|l| key(name, l));
        let page = self
            .blocking(move |s| Ok(s.meta.scan(NS_TAGS, &pre, after.as_deref(), n + 1)?))
            .await?;
        let skip = prefix(name).len();
        let mut tags: Vec<String> = page
            .into_iter()
            .map(|(k, _)| k[skip..].to_string())
            .collect();
        let mut headers = Vec::new();
        if tags.len() > n {
            tags.truncate(n);
            if let Some(l) = tags.last() {
                headers.push((
                    "link",
                    format!("</v2/{name}/tags/list?n={n}&last={l}>; rel=\"next\""),
                ));
            }
        }
        Ok(json_body(
            StatusCode::OK,
            headers,
            json!({"name": name.as_str(), "tags": tags}).to_string(),
            "application/json",
        ))
    }

    /// The digest a manifest reference names in `repo`.
    async fn resolve(&self, name: &Name, r: &Reference) -> Result<(Digest, ManifestMeta)> {
        let unknown = || {
            RegistryError::ManifestUnknown(format!(
                "{} in {name}",
                match r {
                    Reference::Tag(t) => t.clone(),
                    Reference::Digest(d) => d.to_string(),
                }
            ))
        };
        let digest = match r {
            Reference::Digest(d) => d.clone(),
            Reference::Tag(t) => {
                let k = key(name, t);
                let v = self
                    .blocking(move |s| Ok(s.meta.get(NS_TAGS, &k)?))
                    .await?
                    .ok_or_else(unknown)?;
                Digest::parse(&String::from_utf8_lossy(&v))
                    .map_err(|e| RegistryError::Internal(e.to_string()))?
            }
        };
        let k = key(name, &digest.to_string());
        let meta = self
            .blocking(move |s| Ok(s.meta.get(NS_MANIFESTS, &k)?))
            .await?
            .ok_or_else(unknown)?;
        let meta: ManifestMeta =
            serde_json::from_slice(&meta).map_err(|e| RegistryError::Internal(e.to_string()))?;
        Ok((digest, meta))
    }

    async fn get_manifest(&self, name: &Name, r: &str, head: bool) -> Result<Response> {
        let r = Reference::parse(r)?;
        let (digest, meta) = self.resolve(name, &r).await?;
        let headers = vec![
            ("content-type", meta.media_type.clone()),
            ("docker-content-digest", digest.to_string()),
            ("etag", format!("\"{digest}\"")),
            ("content-length", meta.size.to_string()),
        ];
        let body = if head {
            Body::empty()
        } else {
            Body::from(self.storage.read_all(&digest).await?)
        };
        Ok(respond(StatusCode::OK, headers, body))
    }

    async fn put_manifest(&self, name: &Name, r: &str, req: Request) -> Result<Response> {
        let r = Reference::parse(r)?;
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = read_limited(req.into_body(), MAX_MANIFEST).await?;
        let parsed = manifest::parse(&body, content_type.as_deref())?;
        let alg = match &r {
            Reference::Digest(d) => d.algorithm,
            Reference::Tag(_) => reference::Algorithm::Sha256,
        };
        let digest = digest_of(alg, &body);
        if let Reference::Digest(d) = &r
            && *d != digest
        {
            return Err(RegistryError::DigestInvalid(format!(
                "manifest URL says {d}, content is {digest}"
            )));
        }
        let _gc = self.gc_lock.read().await;
        // Everything it references must be in this repository.
        for b in parsed.blobs.iter().filter(|b| !b.foreign) {
            if !self.link_exists(name, &b.digest).await?
                || self.storage.blob_size(&b.digest).is_none()
            {
                return Err(RegistryError::ManifestBlobUnknown(format!(
                    "{} (referenced by the manifest)",
                    b.digest
                )));
            }
        }
        for m in &parsed.manifests {
            let k = key(name, &m.digest.to_string());
            if self
                .blocking(move |s| Ok(s.meta.get(NS_MANIFESTS, &k)?))
                .await?
                .is_none()
            {
                return Err(RegistryError::ManifestBlobUnknown(format!(
                    "{} (listed by the index)",
                    m.digest
                )));
            }
        }
        self.storage.put_bytes(&digest, body.clone()).await?;
        let references: Vec<String> = parsed
            .blobs
            .iter()
            .chain(parsed.manifests.iter())
            .map(|d| d.digest.to_string())
            .collect();
        let meta = ManifestMeta {
            media_type: parsed.media_type.clone(),
            size: body.len() as u64,
            subject: parsed.subject.as_ref().map(|s| s.digest.to_string()),
            artifact_type: parsed.artifact_type.clone(),
            annotations: parsed.annotations.clone(),
            references,
        };
        let meta_bytes =
            serde_json::to_vec(&meta).map_err(|e| RegistryError::Internal(e.to_string()))?;
        let mut ops = vec![
            Op::put(NS_MANIFESTS, key(name, &digest.to_string()), meta_bytes),
            Op::put(
                NS_LINKS,
                key(name, &digest.to_string()),
                storage::link_value(body.len() as u64),
            ),
            Op::put(NS_REPOS, name.to_string(), Vec::new()),
        ];
        let tag = match &r {
            Reference::Tag(t) => {
                ops.push(Op::put(
                    NS_TAGS,
                    key(name, t),
                    digest.to_string().into_bytes(),
                ));
                Some(t.clone())
            }
            Reference::Digest(_) => None,
        };
        if let Some(subject) = &parsed.subject {
            let descriptor = json!({
                "mediaType": parsed.media_type,
                "digest": digest.to_string(),
                "size": body.len(),
                "artifactType": parsed.artifact_type,
                "annotations": parsed.annotations,
            });
            ops.push(Op::put(
                NS_REFERRERS,
                key(name, &format!("{}\n{digest}", subject.digest)),
                descriptor.to_string().into_bytes(),
            ));
        }
        self.blocking(move |s| Ok(s.meta.apply(&ops)?)).await?;
        self.events.send(Event::new(
            Action::Push,
            name,
            &digest,
            tag.as_deref(),
            &parsed.media_type,
            body.len() as u64,
        ));
        let mut headers = vec![
            ("location", format!("/v2/{name}/manifests/{digest}")),
            ("docker-content-digest", digest.to_string()),
        ];
        if let Some(s) = &parsed.subject {
            headers.push(("oci-subject", s.digest.to_string()));
        }
        Ok(respond(StatusCode::CREATED, headers, Body::empty()))
    }

    async fn delete_manifest(&self, name: &Name, r: &str) -> Result<Response> {
        let r = Reference::parse(r)?;
        match &r {
            Reference::Tag(t) => {
                let (digest, meta) = self.resolve(name, &r).await?;
                let k = key(name, t);
                self.blocking(move |s| Ok(s.meta.delete(NS_TAGS, &k)?))
                    .await?;
                self.events.send(Event::new(
                    Action::Delete,
                    name,
                    &digest,
                    Some(t),
                    &meta.media_type,
                    meta.size,
                ));
            }
            Reference::Digest(d) => {
                let (digest, meta) = self.resolve(name, &r).await?;
                let pre = prefix(name);
                let target = d.to_string();
                // The tags naming it, read a page at a time (a repository
                // may hold any number of tags; only the matches are kept).
                let wanted = target.clone();
                let mut ops: Vec<Op> = self
                    .blocking(move |s| {
                        let mut ops = Vec::new();
                        s.meta.scan_each(NS_TAGS, &pre, DEFAULT_PAGE, &mut |k, v| {
                            if v == wanted.as_bytes() {
                                ops.push(Op::delete(NS_TAGS, k));
                            }
                        })?;
                        Ok(ops)
                    })
                    .await?;
                ops.push(Op::delete(NS_MANIFESTS, key(name, &target)));
                ops.push(Op::delete(NS_LINKS, key(name, &target)));
                if let Some(subject) = &meta.subject {
                    ops.push(Op::delete(
                        NS_REFERRERS,
                        key(name, &format!("{subject}\n{target}")),
                    ));
                }
                self.blocking(move |s| Ok(s.meta.apply(&ops)?)).await?;
                self.events.send(Event::new(
                    Action::Delete,
                    name,
                    &digest,
                    None,
                    &meta.media_type,
                    meta.size,
                ));
            }
        }
        Ok(respond(StatusCode::ACCEPTED, Vec::new(), Body::empty()))
    }

    async fn link_exists(&self, name: &Name, d: &Digest) -> Result<bool> {
        let (n, d) = (name.clone(), d.clone());
        self.blocking(move |s| s.linked(&n, &d)).await
    }

    async fn get_blob(
        &self,
        name: &Name,
        d: &str,
        req_headers: &HeaderMap,
        head: bool,
    ) -> Result<Response> {
        let digest = Digest::parse(d)?;
        if !self.link_exists(name, &digest).await? {
            return Err(RegistryError::BlobUnknown(format!("{digest} in {name}")));
        }
        let size = self
            .storage
            .blob_size(&digest)
            .ok_or_else(|| RegistryError::BlobUnknown(format!("{digest} in {name}")))?;
        let mut headers = vec![
            ("content-type", "application/octet-stream".to_string()),
            ("docker-content-digest", digest.to_string()),
            ("etag", format!("\"{digest}\"")),
            ("accept-ranges", "bytes".to_string()),
            ("cache-control", "max-age=31536000".to_string()),
        ];
        let (status, start, len) =
            match req_headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
                None => (StatusCode::OK, 0, size),
                Some(h) => match parse_range(h, size) {
                    Some((a, b)) => {
                        headers.push(("content-range", format!("bytes {a}-{b}/{size}")));
                        (StatusCode::PARTIAL_CONTENT, a, b - a + 1)
                    }
                    None => {
                        let mut r = RegistryError::RangeInvalid(format!(
                            "{h:?} against a blob of {size} bytes"
                        ))
                        .into_response();
                        r.headers_mut()
                            .insert(header::CONTENT_RANGE, hv(&format!("bytes */{size}")));
                        return Ok(r);
                    }
                },
            };
        headers.push(("content-length", len.to_string()));
        let body = if head || len == 0 {
            Body::empty()
        } else {
            Body::from_stream(self.storage.read_stream(&digest, start, len))
        };
        Ok(respond(status, headers, body))
    }

    async fn delete_blob(&self, name: &Name, d: &str) -> Result<Response> {
        let digest = Digest::parse(d)?;
        if !self.link_exists(name, &digest).await? {
            return Err(RegistryError::BlobUnknown(format!("{digest} in {name}")));
        }
        let k = key(name, &digest.to_string());
        self.blocking(move |s| Ok(s.meta.delete(NS_LINKS, &k)?))
            .await?;
        Ok(respond(StatusCode::ACCEPTED, Vec::new(), Body::empty()))
    }

    fn upload_headers(name: &Name, id: &str, range: String) -> Vec<(&'static str, String)> {
        vec![
            ("location", format!("/v2/{name}/blobs/uploads/{id}")),
            ("range", range),
            ("docker-upload-uuid", id.to_string()),
        ]
    }

    fn created(name: &Name, digest: &Digest) -> Response {
        respond(
            StatusCode::CREATED,
            vec![
                ("location", format!("/v2/{name}/blobs/{digest}")),
                ("docker-content-digest", digest.to_string()),
            ],
            Body::empty(),
        )
    }

    async fn start_upload(
        &self,
        name: &Name,
        p: &[(String, String)],
        req: Request,
    ) -> Result<Response> {
        // Cross-repository mount: link the blob if `from` may read it;
        // otherwise fall back to a plain upload, as the spec says.
        if let (Some(mount), Some(from)) = (param(p, "mount"), param(p, "from")) {
            let digest = Digest::parse(mount)?;
            let from = Name::parse(from)?;
            let _gc = self.gc_lock.read().await;
            if self.link_exists(&from, &digest).await?
                && let Some(size) = self.storage.blob_size(&digest)
            {
                let ops = vec![
                    Op::put(
                        NS_LINKS,
                        key(name, &digest.to_string()),
                        storage::link_value(size),
                    ),
                    Op::put(NS_REPOS, name.to_string(), Vec::new()),
                ];
                self.blocking(move |s| Ok(s.meta.apply(&ops)?)).await?;
                return Ok(Self::created(name, &digest));
            }
        }
        let monolithic = param(p, "digest").map(Digest::parse).transpose()?;
        let handle = self.storage.start_upload(name).await?;
        let mut up = handle.lock().await;
        if let Some(digest) = monolithic {
            let body = req.into_body().into_data_stream();
            self.storage.append(&mut up, body).await?;
            self.storage.finish_upload(&mut up, &digest).await?;
            return Ok(Self::created(name, &digest));
        }
        Ok(respond(
            StatusCode::ACCEPTED,
            Self::upload_headers(name, &up.id, "0-0".into()),
            Body::empty(),
        ))
    }

    async fn upload_status(&self, name: &Name, id: &str) -> Result<Response> {
        let handle = self.storage.upload(name, id).await?;
        let up = handle.lock().await;
        Ok(respond(
            StatusCode::NO_CONTENT,
            Self::upload_headers(name, id, up.range()),
            Body::empty(),
        ))
    }

    /// Checks a chunk's Content-Range against what was received so far.
    fn check_chunk(headers: &HeaderMap, offset: u64) -> Result<()> {
        let Some(cr) = headers
            .get(header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
        else {
            return Ok(());
        };
        let (start, end) = parse_content_range(cr).ok_or_else(|| {
            RegistryError::RangeInvalid(format!("Content-Range {cr:?}: expected <start>-<end>"))
        })?;
        if start != offset {
            return Err(RegistryError::RangeInvalid(format!(
                "chunk starts at {start}, but {offset} bytes were received so far"
            )));
        }
        if let Some(len) = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            && len != end - start + 1
        {
            return Err(RegistryError::RangeInvalid(format!(
                "Content-Range {cr:?} is {} bytes, Content-Length {len}",
                end - start + 1
            )));
        }
        Ok(())
    }

    async fn patch_upload(&self, name: &Name, id: &str, req: Request) -> Result<Response> {
        let handle = self.storage.upload(name, id).await?;
        let mut up = handle.lock().await;
        Self::check_chunk(req.headers(), up.offset)?;
        let body = req.into_body().into_data_stream();
        self.storage.append(&mut up, body).await?;
        Ok(respond(
            StatusCode::ACCEPTED,
            Self::upload_headers(name, id, up.range()),
            Body::empty(),
        ))
    }

    async fn finish_upload(
        &self,
        name: &Name,
        id: &str,
        p: &[(String, String)],
        req: Request,
    ) -> Result<Response> {
        let digest = param(p, "digest").ok_or_else(|| {
            RegistryError::DigestInvalid("the digest query parameter is required".into())
        })?;
        let digest = Digest::parse(digest)?;
        let handle = self.storage.upload(name, id).await?;
        let mut up = handle.lock().await;
        Self::check_chunk(req.headers(), up.offset)?;
        let body = req.into_body().into_data_stream();
        self.storage.append(&mut up, body).await?;
        self.storage.finish_upload(&mut up, &digest).await?;
        Ok(Self::created(name, &digest))
    }

    async fn cancel_upload(&self, name: &Name, id: &str) -> Result<Response> {
        let handle = self.storage.upload(name, id).await?;
        let up = handle.lock().await;
        self.storage.cancel_upload(&up).await?;
        Ok(respond(StatusCode::NO_CONTENT, Vec::new(), Body::empty()))
    }

    /// The referrers of a subject as an OCI index, a page at a time: at
    /// most `n` (default 1000) descriptors and about 4 MiB of them (what
    /// clients accept of an index); a longer list carries a `Link` to the
    /// rest (`last`: the digest the page ended with), as the spec allows.
    async fn referrers(&self, name: &Name, d: &str, p: &[(String, String)]) -> Result<Response> {
        let subject = Digest::parse(d)?;
        let filter = param(p, "artifactType").map(str::to_string);
        let n = page_size(p)?;
        let pre = key(name, &format!("{subject}\n"));
        let after = param(p, "last").map(|l| format!("{pre}{l}"));
        let scan_pre = pre.clone();
        let entries = self
            .blocking(move |s| {
                Ok(s.meta
                    .scan(NS_REFERRERS, &scan_pre, after.as_deref(), n + 1)?)
            })
            .await?;
        let mut more = entries.len() > n;
        let (mut manifests, mut bytes, mut last) = (Vec::new(), 0, None);
        for (k, v) in entries.into_iter().take(n) {
            if bytes + v.len() > REFERRERS_PAGE_BYTES && last.is_some() {
                more = true;
                break;
            }
            bytes += v.len();
            last = Some(k[pre.len()..].to_string());
            let Ok(mut m) = serde_json::from_slice::<serde_json::Value>(&v) else {
                continue;
            };
            if let Some(o) = m.as_object_mut() {
                o.retain(|_, val| !val.is_null());
            }
            if filter
                .as_deref()
                .is_none_or(|f| m["artifactType"].as_str() == Some(f))
            {
                manifests.push(m);
            }
        }
        let mut headers = Vec::new();
        if filter.is_some() {
            headers.push(("oci-filters-applied", "artifactType".to_string()));
        }
        if let (true, Some(l)) = (more, &last) {
            let mut query = vec![("n", n.to_string()), ("last", l.clone())];
            query.extend(filter.map(|f| ("artifactType", f)));
            let query = serde_urlencoded::to_string(&query).unwrap_or_default();
            headers.push((
                "link",
                format!("</v2/{name}/referrers/{subject}?{query}>; rel=\"next\""),
            ));
        }
        let body =
            json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}).to_string();
        Ok(json_body(StatusCode::OK, headers, body, OCI_INDEX))
    }
}

/// Reads a body, refusing (413) more than `limit` bytes.
async fn read_limited(body: Body, limit: usize) -> Result<Bytes> {
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| RegistryError::ManifestInvalid(format!("body cut: {e}")))?;
        if buf.len() + chunk.len() > limit {
            return Err(RegistryError::ManifestTooLarge(format!(
                "more than {limit} bytes"
            )));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=-10", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=95-200", 100), Some((95, 99)));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("bytes=5-1", 100), None);
        assert_eq!(parse_range("bytes=0-1,3-4", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
        assert_eq!(parse_content_range("0-99"), Some((0, 99)));
        assert_eq!(parse_content_range("bytes 10-19/100"), Some((10, 19)));
        assert_eq!(parse_content_range("9-1"), None);
    }
}
