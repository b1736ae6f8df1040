//! Kong's Admin API: CRUD on services, routes, upstreams, targets,
//! consumers, plugins, credentials and certificates at Kong's paths, with
//! Kong's bodies (JSON or forms), paging, errors and status codes; `POST
//! /config` and `GET /config`; `GET /` and `GET /status`; the admin token.
//!
//! Every change takes the admin lock, computes the whole next set of
//! entities, builds Kong's flat declarative document from it, parses and
//! compiles that (the same code as a declarative file), writes the
//! difference to the store in one transaction, and only then swaps the new
//! routing table in. A refused change touches neither the store nor the
//! running configuration.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bronze_store::{Op, Store, StoreError};
use serde_json::{Map, Value, json};
use subtle::ConstantTimeEq;

use crate::Gateway;
use crate::balancer::Registry;
use crate::declarative::{self, Declarative, Invalid};
use crate::entities::{self, Entities, KINDS, Kind};
use crate::flat;
use crate::multipart;
use crate::router::Table;

/// The largest admin request body (a whole declarative configuration).
pub const ADMIN_BODY_LIMIT: usize = 64 << 20;

/// The version of Kong's Admin API this one follows (reported by `GET /`).
pub const KONG_VERSION: &str = "3.9.0";

/// What `GET /` reports of the configuration.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub proxy_listen: String,
    pub admin_listen: String,
    pub data_dir: String,
    pub declarative_config: String,
}

pub struct Admin {
    gateway: Arc<Gateway>,
    store: Arc<dyn Store>,
    state: tokio::sync::Mutex<Entities>,
    /// SHA-256 of the admin token, when one is required.
    token: Option<[u8; 32]>,
    node_id: String,
    info: NodeInfo,
}

fn namespace(k: &Kind) -> String {
    format!("gateway.{}", k.name)
}

/// The entities the store holds.
pub fn load(store: &dyn Store) -> Result<Entities, StoreError> {
    let mut out = Entities::default();
    for k in KINDS {
        for (id, bytes) in store.list(&namespace(k))? {
            let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
                StoreError::Backend(format!("{} {id}: not JSON: {e}", namespace(k)))
            })?;
            out.insert(k, id, v);
        }
    }
    Ok(out)
}

/// The store writes that turn `old` into `new`.
pub fn diff(old: &Entities, new: &Entities) -> Vec<Op> {
    let mut ops = Vec::new();
    for k in KINDS {
        let ns = namespace(k);
        for (id, v) in new.of(k) {
            if old.get(k, id) != Some(v) {
                ops.push(Op::put(&ns, id.clone(), v.to_string()));
            }
        }
        for (id, _) in old.of(k) {
            if new.get(k, id).is_none() {
                ops.push(Op::delete(&ns, id.clone()));
            }
        }
    }
    ops
}

/// Parses and compiles the flat document of `e`.
pub fn check(e: &Entities, registry: &Arc<Registry>) -> Result<(Declarative, Table), Invalid> {
    let (doc, _) = e.document();
    let d = declarative::parse_value(doc)?;
    let table = flat::compile(&d, registry)?;
    Ok((d, table))
}

/// A whole declarative document (a file at start, `POST /config`): its
/// entities, validated. Errors name the field as the document wrote it.
pub fn from_document(
    doc: &Value,
    registry: &Arc<Registry>,
) -> Result<(Entities, Declarative, Table), Invalid> {
    let as_written = declarative::parse_value(doc.clone())?;
    flat::compile(&as_written, &registry.scratch())?;
    let mut e = Entities::from_document(doc)?;
    crate::secrets::hash_all(&mut e, &registry.plugins.hashes)?;
    for k in KINDS {
        for group in k.unique {
            let mut seen = std::collections::HashSet::new();
            for (_, v) in e.of(k) {
                let values: Vec<Option<&Value>> = group
                    .iter()
                    .map(|f| v.get(*f).filter(|v| !v.is_null()))
                    .collect();
                if group.len() == 1 && values[0].is_none() {
                    continue;
                }
                if !seen.insert(serde_json::to_string(&values).unwrap_or_default()) {
                    return Err(Invalid::new(
                        format!("{}.{}", k.name, group.join(",")),
                        format!("{} appears twice", unique_text(group, v)),
                    ));
                }
            }
        }
    }
    let (d, table) = check(&e, registry)?;
    Ok((e, d, table))
}

/// Kong's `{name="x"}` rendering of a unique key.
fn unique_text(group: &[&str], v: &Value) -> String {
    let parts: Vec<String> = group
        .iter()
        .filter_map(|f| {
            v.get(*f)
                .filter(|x| !x.is_null())
                .map(|x| format!("{f}={x}"))
        })
        .collect();
    format!("{{{}}}", parts.join(","))
}

fn json_response(status: StatusCode, v: Value) -> Response {
    (status, axum::Json(v)).into_response()
}

fn not_found() -> Response {
    json_response(StatusCode::NOT_FOUND, json!({"message": "Not found"}))
}

fn bad_request(message: impl Into<String>) -> Response {
    json_response(StatusCode::BAD_REQUEST, json!({"message": message.into()}))
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "admin change failed");
    json_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        json!({"message": "An unexpected error occurred", "error": e.to_string()}),
    )
}

/// `paths[1]` as Kong writes it in messages: `paths.2` (1-based).
fn kong_path(field: &str) -> String {
    let mut out = String::new();
    for part in field.split('.') {
        let (name, indices) = match part.find('[') {
            Some(p) => (&part[..p], &part[p..]),
            None => (part, ""),
        };
        if !out.is_empty() && !name.is_empty() {
            out.push('.');
        }
        out.push_str(name);
        for i in indices.split('[').filter(|s| !s.is_empty()) {
            let i = i.trim_end_matches(']');
            out.push('.');
            match i.parse::<usize>() {
                Ok(n) => out.push_str(&(n + 1).to_string()),
                Err(_) => out.push_str(i),
            }
        }
    }
    out
}

/// Kong's nested `fields` object for one error: `paths[1]` ->
/// `{"paths": [null, "message"]}`.
fn kong_fields(field: &str, message: &str) -> Value {
    let mut v = Value::from(message);
    for part in field.split('.').rev() {
        let (name, indices) = match part.find('[') {
            Some(p) => (&part[..p], &part[p..]),
            None => (part, ""),
        };
        let idx: Vec<usize> = indices
            .split('[')
            .filter_map(|s| s.trim_end_matches(']').parse().ok())
            .collect();
        for i in idx.into_iter().rev() {
            let mut a = vec![Value::Null; i + 1];
            a[i] = v;
            v = Value::Array(a);
        }
        if !name.is_empty() {
            let mut m = Map::new();
            m.insert(name.to_string(), v);
            v = Value::Object(m);
        }
    }
    v
}

/// 400, Kong's schema violation, naming `field` (relative to the entity,
/// `@entity` for the entity as a whole).
pub fn schema_violation(field: &str, message: &str) -> Response {
    let (text, fields) = if field == "@entity" {
        (message.to_string(), json!({"@entity": [message]}))
    } else {
        (
            format!("{}: {message}", kong_path(field)),
            kong_fields(field, message),
        )
    };
    json_response(
        StatusCode::BAD_REQUEST,
        json!({
            "code": 2,
            "name": "schema violation",
            "message": format!("schema violation ({text})"),
            "fields": fields,
        }),
    )
}

fn declarative_invalid(e: &Invalid) -> Response {
    json_response(
        StatusCode::BAD_REQUEST,
        json!({
            "code": 14,
            "name": "invalid declarative configuration",
            "message": format!("declarative config is invalid: {e}"),
            "fields": { e.field.clone(): e.message.clone() },
        }),
    )
}

/// The entity a change is about, and where it sits in the document.
type Focus<'a> = Option<(&'static Kind, &'a str)>;

impl Admin {
    pub(crate) fn new(
        gateway: Arc<Gateway>,
        store: Arc<dyn Store>,
        entities: Entities,
        token: &str,
        info: NodeInfo,
    ) -> Self {
        Self {
            gateway,
            store,
            state: tokio::sync::Mutex::new(entities),
            token: (!token.is_empty()).then(|| crate::sha256(&[token.as_bytes()])),
            node_id: entities::new_id(),
            info,
        }
    }

    /// Runs `f` on the blocking pool, in one of the gateway's slots for
    /// CPU-heavy work (counted in its metrics): compiling a configuration
    /// (milliseconds for thousands of routes) and bcrypt (tens of
    /// milliseconds a new plain-text password) must not hold a worker
    /// thread, which with `--workers 1` is the one that proxies.
    async fn off_worker<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Box<Response>> {
        let cpu = self.gateway.registry().plugins.cpu.clone();
        cpu.run(f)
            .await
            .ok_or_else(|| Box::new(internal("the work panicked")))
    }

    /// Validates `next` (coercing form strings of the focused entity to
    /// what the schema expects), persists the difference, swaps the table.
    async fn commit(
        &self,
        current: &mut Entities,
        mut next: Entities,
        focus: Focus<'_>,
        form: bool,
    ) -> Result<Entities, Box<Response>> {
        let mut attempts = 0;
        let (d, table) = loop {
            let (doc, index) = next.document();
            let registry = self.gateway.registry();
            let checked = self
                .off_worker(move || {
                    declarative::parse_value(doc)
                        .and_then(|d| flat::compile(&d, &registry).map(|t| (d, t)))
                })
                .await?;
            let e = match checked {
                Ok(ok) => break ok,
                Err(e) => e,
            };
            let relative = focus.and_then(|(k, id)| {
                let i = index.get(&(k.name, id.to_string()))?;
                let prefix = format!("{}[{i}]", k.name);
                let rest = e.field.strip_prefix(&prefix)?;
                if rest.is_empty() {
                    Some("@entity".to_string())
                } else {
                    rest.strip_prefix('.').map(str::to_string)
                }
            });
            if let (true, Some(rel), Some((k, id))) = (form, &relative, focus)
                && attempts < 100
                && let Some(v) = next
                    .by_kind
                    .get_mut(k.name)
                    .and_then(|m| m.get_mut(id))
                    .and_then(|v| entities::at_path(v, rel))
                && entities::coerce(v, &e.message)
            {
                attempts += 1;
                continue;
            }
            return Err(Box::new(match relative {
                Some(rel) => schema_violation(&rel, &e.message),
                None => schema_violation(&e.field, &e.message),
            }));
        };
        let ops = diff(current, &next);
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.apply(&ops))
            .await
            .map_err(|e| Box::new(internal(e)))?
            .map_err(|e| Box::new(internal(e)))?;
        self.gateway.install(d, table);
        *current = next.clone();
        Ok(next)
    }

    /// Resolves foreign keys, checks the id and unique fields, sets the
    /// timestamps: the entity as it will be stored.
    async fn prepare(
        &self,
        next: &Entities,
        k: &'static Kind,
        body: Value,
        existing: Option<(&str, &Value)>,
    ) -> Result<(String, Value), Box<Response>> {
        let Value::Object(mut o) = body else {
            return Err(Box::new(schema_violation("@entity", "expected an object")));
        };
        if k.name == "services" {
            crate::shown::expand_url(&mut o)
                .map_err(|e| Box::new(schema_violation(&e.field, &e.message)))?;
        }
        let id = match existing {
            Some((id, _)) => id.to_string(),
            None => match o.get("id") {
                None | Some(Value::Null) => entities::new_id(),
                Some(Value::String(s)) if entities::is_uuid(s) => {
                    if next.get(k, s).is_some() {
                        return Err(Box::new(json_response(
                            StatusCode::CONFLICT,
                            json!({
                                "code": 3,
                                "name": "primary key violation",
                                "message": format!("primary key violation on key '{{id=\"{s}\"}}'"),
                                "fields": {"id": s},
                            }),
                        )));
                    }
                    s.clone()
                }
                Some(_) => return Err(Box::new(schema_violation("id", "expected a valid UUID"))),
            },
        };
        o.insert("id".into(), Value::String(id.clone()));
        if existing.is_none() {
            for g in k.generated {
                if o.get(*g).is_none_or(Value::is_null) {
                    o.insert(g.to_string(), entities::new_key().into());
                }
            }
        }
        for f in k.foreign {
            let Some(r) = o.get(f.field).filter(|v| !v.is_null()).cloned() else {
                o.remove(f.field);
                continue;
            };
            let parent = entities::kind(f.kind).expect("foreign kinds exist");
            let key = match &r {
                Value::String(s) => Some(s.clone()),
                Value::Object(m) => m
                    .get("id")
                    .or_else(|| parent.endpoint_key.and_then(|e| m.get(e)))
                    .and_then(Value::as_str)
                    .map(str::to_string),
                _ => None,
            };
            let Some(pid) = key.and_then(|key| next.find(parent, &key, None)) else {
                let message = format!(
                    "the foreign key '{r}' does not reference an existing '{}' entity.",
                    f.kind
                );
                return Err(Box::new(json_response(
                    StatusCode::BAD_REQUEST,
                    json!({
                        "code": 4,
                        "name": "foreign key violation",
                        "message": message,
                        "fields": { f.field: r },
                    }),
                )));
            };
            o.insert(f.field.into(), json!({ "id": pid }));
        }
        let now = entities::now();
        let created = existing
            .and_then(|(_, v)| v.get("created_at").cloned())
            .unwrap_or(now.into());
        o.insert("created_at".into(), created);
        o.insert("updated_at".into(), now.into());
        let mut v = Value::Object(o);
        let plugins = self.gateway.registry().plugins.clone();
        v = self
            .off_worker(move || crate::secrets::hash_entity(k, &mut v, &plugins.hashes).map(|()| v))
            .await?
            .map_err(|e| Box::new(schema_violation(&e.field, &e.message)))?;
        for group in k.unique {
            let key: Vec<Option<&Value>> = group
                .iter()
                .map(|f| v.get(*f).filter(|x| !x.is_null()))
                .collect();
            if group.len() == 1 && key[0].is_none() {
                continue;
            }
            let clash = next.of(k).any(|(other, ov)| {
                *other != id
                    && group
                        .iter()
                        .zip(&key)
                        .all(|(f, want)| ov.get(*f).filter(|x| !x.is_null()) == *want)
            });
            if clash {
                let fields: Map<String, Value> = group
                    .iter()
                    .zip(&key)
                    .filter_map(|(f, v)| v.map(|v| (f.to_string(), v.clone())))
                    .collect();
                return Err(Box::new(json_response(
                    StatusCode::CONFLICT,
                    json!({
                        "code": 5,
                        "name": "unique constraint violation",
                        "message": format!("UNIQUE violation detected on '{}'", unique_text(group, &v)),
                        "fields": fields,
                    }),
                )));
            }
        }
        Ok((id, v))
    }

    async fn create(
        &self,
        k: &'static Kind,
        body: Value,
        form: bool,
        status: StatusCode,
    ) -> Response {
        let mut body = body;
        let snis = crate::certs::take_snis(k, &mut body);
        let mut current = self.state.lock().await;
        let mut next = current.clone();
        let (id, v) = match self.prepare(&next, k, body, None).await {
            Ok(x) => x,
            Err(r) => return *r,
        };
        next.insert(k, id.clone(), v);
        if let Err(r) = self.give_snis(&mut next, &id, snis).await {
            return *r;
        }
        match self.commit(&mut current, next, Some((k, &id)), form).await {
            Ok(e) => json_response(status, shown(&e, k, &id)),
            Err(r) => *r,
        }
    }

    /// A certificate's `snis` sugar: its SNI entities replaced by `names`.
    async fn give_snis(
        &self,
        next: &mut Entities,
        cert_id: &str,
        names: Option<Vec<Value>>,
    ) -> Result<(), Box<Response>> {
        let (Some(names), Some(k)) = (names, entities::kind("snis")) else {
            return Ok(());
        };
        crate::certs::remove_snis(next, cert_id);
        for body in crate::certs::sni_bodies(cert_id, names) {
            let (id, v) = self.prepare(next, k, body, None).await?;
            next.insert(k, id, v);
        }
        Ok(())
    }

    /// PUT (replace) or PATCH (merge) of an existing entity.
    async fn update(
        &self,
        k: &'static Kind,
        id: &str,
        body: Value,
        patch: bool,
        form: bool,
    ) -> Response {
        let mut body = body;
        let snis = crate::certs::take_snis(k, &mut body);
        let mut current = self.state.lock().await;
        let Some(old) = current.get(k, id).cloned() else {
            return not_found();
        };
        let body = if patch {
            let Value::Object(changes) = body else {
                return schema_violation("@entity", "expected an object");
            };
            let mut merged = old.clone();
            // A service a document declared with `url`: the PATCH changes
            // the fields the url stands for.
            if let (true, Some(o)) = (k.name == "services", merged.as_object_mut()) {
                let _ = crate::shown::expand_url(o);
            }
            merge(&mut merged, changes);
            merged
        } else {
            body
        };
        let mut next = current.clone();
        let (id, v) = match self.prepare(&next, k, body, Some((id, &old))).await {
            Ok(x) => x,
            Err(r) => return *r,
        };
        next.insert(k, id.clone(), v);
        if let Err(r) = self.give_snis(&mut next, &id, snis).await {
            return *r;
        }
        match self.commit(&mut current, next, Some((k, &id)), form).await {
            Ok(e) => json_response(StatusCode::OK, shown(&e, k, &id)),
            Err(r) => *r,
        }
    }

    async fn delete(&self, k: &'static Kind, id: &str) -> Response {
        let mut current = self.state.lock().await;
        if current.get(k, id).is_none() {
            // Kong: deleting what is not there is not an error.
            return StatusCode::NO_CONTENT.into_response();
        }
        for child in KINDS {
            for f in child
                .foreign
                .iter()
                .filter(|f| f.kind == k.name && !f.cascade)
            {
                if current
                    .of(child)
                    .any(|(_, v)| v.get(f.field).and_then(entities::fk_id) == Some(id))
                {
                    return json_response(
                        StatusCode::BAD_REQUEST,
                        json!({
                            "code": 4,
                            "name": "foreign key violation",
                            "message": format!("an existing '{}' entity references this '{}' entity", child.name, k.name),
                            "fields": {"@referenced_by": child.name},
                        }),
                    );
                }
            }
        }
        let mut next = current.clone();
        remove_cascading(&mut next, k, id);
        match self.commit(&mut current, next, None, false).await {
            Ok(_) => StatusCode::NO_CONTENT.into_response(),
            Err(r) => *r,
        }
    }

    /// `POST /config`: the whole configuration replaced.
    async fn replace(&self, doc: Value) -> Response {
        let mut current = self.state.lock().await;
        let registry = self.gateway.registry();
        let (next, d, table) = match self
            .off_worker(move || from_document(&doc, &registry))
            .await
        {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => return declarative_invalid(&e),
            Err(e) => return *e,
        };
        let ops = diff(&current, &next);
        let store = self.store.clone();
        let written = tokio::task::spawn_blocking(move || store.apply(&ops)).await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return internal(e),
            Err(e) => return internal(e),
        }
        self.gateway.install(d, table);
        *current = next;
        let running = self.gateway.current.lock().clone();
        json_response(
            StatusCode::CREATED,
            serde_json::to_value(running).unwrap_or_default(),
        )
    }
}

/// Entity `id` of kind `k` as the API shows it (as Kong does: every
/// field, defaults filled in).
fn shown(e: &Entities, k: &Kind, id: &str) -> Value {
    e.get(k, id)
        .cloned()
        .map(|v| crate::shown::entity(e, k, v))
        .unwrap_or_default()
}

/// Kong's PATCH: fields replaced, nested records (a plugin's `config`)
/// merged, null clears.
fn merge(into: &mut Value, changes: Map<String, Value>) {
    let Some(o) = into.as_object_mut() else {
        return;
    };
    for (key, value) in changes {
        match (o.get_mut(&key), value) {
            (_, Value::Null) => {
                o.remove(&key);
            }
            (Some(Value::Object(old)), Value::Object(new))
                if !entities::KINDS
                    .iter()
                    .any(|k| k.foreign.iter().any(|f| f.field == key)) =>
            {
                let mut old = Value::Object(std::mem::take(old));
                merge(&mut old, new);
                o.insert(key, old);
            }
            (_, value) => {
                o.insert(key, value);
            }
        }
    }
}

fn remove_cascading(e: &mut Entities, k: &'static Kind, id: &str) {
    e.remove(k, id);
    for child in KINDS {
        for f in child
            .foreign
            .iter()
            .filter(|f| f.kind == k.name && f.cascade)
        {
            let ids: Vec<String> = e
                .of(child)
                .filter(|(_, v)| v.get(f.field).and_then(entities::fk_id) == Some(id))
                .map(|(cid, _)| cid.clone())
                .collect();
            for cid in ids {
                remove_cascading(e, child, &cid);
            }
        }
    }
}

/// A request body as Kong reads it: JSON, or a form, urlencoded or
/// `multipart/form-data` (values coerced by the schema later). Returns the
/// value and whether it was a form.
fn body_value(headers: &HeaderMap, body: &[u8]) -> Result<(Value, bool), Box<Response>> {
    let raw = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let ct = raw.to_ascii_lowercase();
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok((Value::Object(Map::new()), false));
    }
    if ct.starts_with("application/json") {
        return serde_json::from_slice(body)
            .map(|v| (v, false))
            .map_err(|_| Box::new(bad_request("Cannot parse JSON body")));
    }
    if ct.is_empty() || ct.starts_with("application/x-www-form-urlencoded") {
        return entities::form(body)
            .map(|v| (v, true))
            .map_err(|e| Box::new(schema_violation(&e.field, &e.message)));
    }
    if let Some(parts) = multipart_parts(raw, body) {
        let mut fields = Vec::new();
        for p in parts? {
            let text = std::str::from_utf8(p.value)
                .map_err(|_| Box::new(schema_violation(&p.name, "expected UTF-8 text")))?;
            fields.push((Cow::Owned(p.name), Cow::Owned(text.to_string())));
        }
        return entities::form_fields(fields)
            .map(|v| (v, true))
            .map_err(|e| Box::new(schema_violation(&e.field, &e.message)));
    }
    Err(Box::new(json_response(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        json!({"message": format!("{ct}: expected application/json, application/x-www-form-urlencoded or multipart/form-data")}),
    )))
}

/// The parts of a `multipart/form-data` body (`None` for another content
/// type), or a 400 saying what is wrong with it.
fn multipart_parts<'a>(
    content_type: &str,
    body: &'a [u8],
) -> Option<Result<Vec<multipart::Part<'a>>, Box<Response>>> {
    let boundary = multipart::boundary(content_type)?;
    Some(
        boundary
            .and_then(|b| multipart::parts(body, &b))
            .map_err(|m| Box::new(bad_request(m))),
    )
}

/// Decodes `%XX` of a path segment (`+` is itself in a path).
fn percent_decode(s: &str) -> String {
    crate::percent::decode(s, false).into_owned()
}

/// `GET` of a collection: Kong's `{"data": [...], "next": ..., "offset": ...}`
/// paged by `size` (default 100, at most 1000) and `offset` (the last id
/// of the previous page), in id order, filtered by `tags`.
fn list(
    current: &Entities,
    k: &Kind,
    scope: Option<(&str, &str)>,
    path: &str,
    query: Option<&str>,
) -> Response {
    let mut size = 100usize;
    let mut size_given = false;
    let mut offset: Option<String> = None;
    let mut tags: Option<String> = None;
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match key.as_ref() {
            "size" => match value.parse::<usize>() {
                Ok(n) if (1..=1000).contains(&n) => {
                    size = n;
                    size_given = true;
                }
                _ => {
                    return json_response(
                        StatusCode::BAD_REQUEST,
                        json!({"code": 9, "name": "invalid size",
                            "message": "size must be an integer between 1 and 1000"}),
                    );
                }
            },
            "offset" => {
                if !entities::is_uuid(&value) {
                    return json_response(
                        StatusCode::BAD_REQUEST,
                        json!({"code": 7, "name": "invalid offset",
                            "message": format!("'{value}' is not a valid offset: expected the offset a previous page returned")}),
                    );
                }
                offset = Some(value.into_owned());
            }
            // Kong's tag filter: `a,b` all of them, `a/b` any of them.
            "tags" => tags = Some(value.into_owned()),
            _ => {}
        }
    }
    let tagged = |v: &Value| {
        let Some(want) = &tags else {
            return true;
        };
        let has = |t: &str| {
            v.get("tags")
                .and_then(Value::as_array)
                .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(t)))
        };
        if want.contains('/') {
            want.split('/').any(has)
        } else {
            want.split(',').all(has)
        }
    };
    let mut page = current
        .of(k)
        .filter(|(_, v)| tagged(v))
        .filter(|(id, _)| offset.as_ref().is_none_or(|o| id.as_str() > o.as_str()))
        .filter(|(_, v)| {
            scope.is_none_or(|(field, id)| v.get(field).and_then(entities::fk_id) == Some(id))
        });
    let data: Vec<Value> = page
        .by_ref()
        .take(size)
        .map(|(_, v)| crate::shown::entity(current, k, v.clone()))
        .collect();
    let more = page.next().is_some();
    let last = data
        .last()
        .and_then(|v| v.get("id"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let (next, offset) = match (more, last) {
        (true, Some(last)) => {
            let size = if size_given {
                format!("&size={size}")
            } else {
                String::new()
            };
            (
                Value::from(format!("{path}?offset={last}{size}")),
                Value::from(last),
            )
        }
        _ => (Value::Null, Value::Null),
    };
    let mut body = json!({"data": data, "next": next});
    if !offset.is_null() {
        body["offset"] = offset;
    }
    json_response(StatusCode::OK, body)
}

/// Everything under the entity paths.
async fn dispatch(
    State(a): State<Arc<Admin>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let segs: Vec<String> = uri
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let (k, scope, key): (&'static Kind, Option<(&'static str, String)>, Option<&str>) =
        match segs.as_slice() {
            [c] | [c, _] => {
                let Some(k) = entities::by_path(c) else {
                    return not_found();
                };
                (k, None, segs.get(1).copied())
            }
            [p, pkey, c] | [p, pkey, c, _] => {
                let Some(pk) = entities::by_path(p) else {
                    return not_found();
                };
                let Some((k, f)) = KINDS.iter().find_map(|k| {
                    (k.scoped == *c)
                        .then(|| k.foreign.iter().find(|f| f.kind == pk.name))
                        .flatten()
                        .map(|f| (k, f))
                }) else {
                    return not_found();
                };
                let Some(pid) = a.state.lock().await.find(pk, pkey, None) else {
                    return not_found();
                };
                (k, Some((f.field, pid)), segs.get(3).copied())
            }
            _ => return not_found(),
        };
    let scope_ref = scope.as_ref().map(|(f, id)| (*f, id.as_str()));
    let with_scope = |mut v: Value| {
        if let (Some((field, pid)), Some(o)) = (&scope, v.as_object_mut()) {
            o.insert(field.to_string(), json!({ "id": pid }));
        }
        v
    };
    match key {
        None => match method {
            Method::GET => {
                let current = a.state.lock().await;
                list(&current, k, scope_ref, uri.path(), uri.query())
            }
            Method::POST => match body_value(&headers, &body) {
                Ok((v, form)) => a.create(k, with_scope(v), form, StatusCode::CREATED).await,
                Err(r) => *r,
            },
            _ => method_not_allowed(),
        },
        Some(key) => {
            let found = a.state.lock().await.find(k, key, scope_ref);
            match (method, found) {
                (Method::GET, Some(id)) => {
                    let current = a.state.lock().await;
                    current.get(k, &id).map_or_else(not_found, |_| {
                        json_response(StatusCode::OK, shown(&current, k, &id))
                    })
                }
                (Method::GET | Method::PATCH, None) => not_found(),
                (Method::PATCH, Some(id)) => match body_value(&headers, &body) {
                    Ok((v, form)) => a.update(k, &id, with_scope(v), true, form).await,
                    Err(r) => *r,
                },
                (Method::PUT, found) => {
                    let (mut v, form) = match body_value(&headers, &body) {
                        Ok(x) => x,
                        Err(r) => return *r,
                    };
                    let v_obj = v.as_object_mut();
                    match (found, v_obj) {
                        (Some(id), _) => {
                            if let (Some(field), Some(o)) = (k.endpoint_key, v.as_object_mut())
                                && !entities::is_uuid(key)
                            {
                                o.insert(field.into(), key.into());
                            }
                            a.update(k, &id, with_scope(v), false, form).await
                        }
                        (None, Some(o)) => {
                            if entities::is_uuid(key) {
                                o.insert("id".into(), key.into());
                            } else if let Some(field) = k.endpoint_key {
                                o.insert(field.into(), key.into());
                            } else {
                                return not_found();
                            }
                            a.create(k, with_scope(v), form, StatusCode::OK).await
                        }
                        (None, None) => schema_violation("@entity", "expected an object"),
                    }
                }
                (Method::DELETE, Some(id)) => a.delete(k, &id).await,
                (Method::DELETE, None) => StatusCode::NO_CONTENT.into_response(),
                _ => method_not_allowed(),
            }
        }
    }
}

fn method_not_allowed() -> Response {
    json_response(
        StatusCode::METHOD_NOT_ALLOWED,
        json!({"message": "Method not allowed"}),
    )
}

/// The running document: JSON, or YAML when the client accepts YAML
/// (a decK-style file to keep).
async fn get_config(State(a): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    let current = a.gateway.current.lock().clone();
    let yaml = headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("yaml"));
    if yaml {
        return match yaml_serde::to_string(&current) {
            Ok(text) => ([(http::header::CONTENT_TYPE, "application/yaml")], text).into_response(),
            Err(e) => internal(e),
        };
    }
    json_response(
        StatusCode::OK,
        serde_json::to_value(current).unwrap_or_default(),
    )
}

/// Kong's `POST /config`: JSON or YAML, raw or as the `config` field of a
/// form; replaces every entity. A refused document changes nothing.
async fn post_config(State(a): State<Arc<Admin>>, headers: HeaderMap, body: Bytes) -> Response {
    let ct = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let text: Vec<u8> = if let Some(parts) = multipart_parts(ct, &body) {
        // `curl -F config=@kong.yml`, Kong's documented way.
        match parts {
            Ok(parts) => match parts.into_iter().find(|p| p.name == "config") {
                Some(p) => p.value.to_vec(),
                None => return bad_request("multipart body: expected a part named config"),
            },
            Err(refused) => return *refused,
        }
    } else if ct.starts_with("application/x-www-form-urlencoded") && body.starts_with(b"config=") {
        form_urlencoded::parse(&body)
            .find(|(k, _)| k == "config")
            .map(|(_, v)| v.into_owned().into_bytes())
            .unwrap_or_default()
    } else {
        body.to_vec()
    };
    match declarative::to_value(&text) {
        Ok(doc) => a.replace(doc).await,
        Err(e) => declarative_invalid(&e),
    }
}

async fn root(State(a): State<Arc<Admin>>) -> Response {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let plugins: std::collections::BTreeSet<String> = {
        let current = a.state.lock().await;
        entities::kind("plugins")
            .map(|k| {
                current
                    .of(k)
                    .filter_map(|(_, v)| v.get("name").and_then(Value::as_str))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let i = &a.info;
    json_response(
        StatusCode::OK,
        json!({
            "version": KONG_VERSION,
            "edition": "community",
            "tagline": "Welcome to bronze-gateway",
            "hostname": hostname,
            "node_id": a.node_id,
            "bronze_version": env!("CARGO_PKG_VERSION"),
            "configuration": {
                "database": if i.data_dir.is_empty() { "memory" } else { "redb" },
                "prefix": i.data_dir,
                "declarative_config": if i.declarative_config.is_empty() { Value::Null } else { Value::from(i.declarative_config.clone()) },
                "proxy_listen": [i.proxy_listen],
                "admin_listen": [i.admin_listen],
                "admin_token_required": a.token.is_some(),
            },
            "plugins": {
                "enabled_in_cluster": plugins,
            },
        }),
    )
}

async fn status(State(a): State<Arc<Admin>>) -> Response {
    let store = a.store.clone();
    let reachable = tokio::task::spawn_blocking(move || store.list("gateway.services").is_ok())
        .await
        .unwrap_or(false);
    let doc = serde_json::to_vec(&*a.gateway.current.lock()).unwrap_or_default();
    let hash = crate::sha256(&[&doc]);
    let hex: String = hash[..16].iter().map(|b| format!("{b:02x}")).collect();
    let counts: BTreeMap<&str, usize> = {
        let current = a.state.lock().await;
        KINDS
            .iter()
            .map(|k| (k.name, current.of(k).count()))
            .collect()
    };
    json_response(
        StatusCode::OK,
        json!({
            "database": {"reachable": reachable},
            "configuration_hash": hex,
            "entities": counts,
        }),
    )
}

/// The admin token, when one is configured: `Kong-Admin-Token: <token>`
/// (Kong Enterprise) or `Authorization: Bearer <token>`, compared in
/// constant time (as SHA-256 digests, so the length does not leak either).
async fn auth(State(a): State<Arc<Admin>>, req: Request, next: Next) -> Response {
    if let Some(want) = &a.token {
        let h = req.headers();
        let given = h.get("kong-admin-token").map(|v| v.as_bytes()).or_else(|| {
            h.get(http::header::AUTHORIZATION)
                .map(|v| v.as_bytes())
                .and_then(|v| v.strip_prefix(b"Bearer "))
        });
        let ok = given.is_some_and(|g| bool::from(crate::sha256(&[g]).as_slice().ct_eq(want)));
        if !ok {
            return json_response(
                StatusCode::UNAUTHORIZED,
                json!({"message": "Invalid credentials. Token or User credentials required"}),
            );
        }
    }
    next.run(req).await
}

/// Kong's `GET /upstreams/{u}/health`: the balancer's view of each target
/// (`HEALTHY`, `UNHEALTHY`, `HEALTHCHECKS_OFF`), one entry per resolved
/// address, with the declared target's `id` and `upstream` when the
/// address is written as declared; `?balancer_health=1` gives the
/// upstream's own health instead: Kong's rule, healthy while the healthy
/// targets' share of the weight is at least `healthchecks.threshold`
/// percent (0, the only value Bronze takes: healthy while it has weight).
async fn upstream_health(
    State(a): State<Arc<Admin>>,
    axum::extract::Path(key): axum::extract::Path<String>,
    uri: Uri,
) -> Response {
    let (uid, name, threshold, targets) = {
        let current = a.state.lock().await;
        let Some(k) = entities::kind("upstreams") else {
            return not_found();
        };
        let Some(uid) = current.find(k, &key, None) else {
            return not_found();
        };
        let u = current.get(k, &uid).cloned().unwrap_or_default();
        let name = u
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let threshold = u
            .pointer("/healthchecks/threshold")
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        let targets: Vec<Value> = entities::kind("targets")
            .map(|t| {
                current
                    .of(t)
                    .filter(|(_, v)| v.get("upstream").and_then(entities::fk_id) == Some(&uid))
                    .map(|(_, v)| v.clone())
                    .collect()
            })
            .unwrap_or_default();
        (uid, name, threshold, targets)
    };
    let Some(health) = a.gateway.proxy.table.load().upstream_health(&name) else {
        return not_found();
    };
    let mut data: Vec<Value> = health
        .get("data")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for entry in &mut data {
        let addr = entry
            .get("target")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let declared = targets.iter().find(|t| {
            t.get("target")
                .and_then(Value::as_str)
                .is_some_and(|t| t == addr || (!t.contains(':') && format!("{t}:8000") == addr))
        });
        if let (Some(o), Some(t)) = (entry.as_object_mut(), declared) {
            for f in ["id", "created_at", "updated_at", "tags"] {
                if let Some(v) = t.get(f) {
                    o.insert(f.into(), v.clone());
                }
            }
        }
        if let Some(o) = entry.as_object_mut() {
            o.insert("upstream".into(), json!({ "id": uid }));
        }
    }
    let balancer = form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .any(|(k, v)| k == "balancer_health" && v != "0" && v != "false");
    if balancer {
        let weight = |e: &Value| e.get("weight").and_then(Value::as_f64).unwrap_or(0.0);
        let state = |e: &Value| {
            e.get("health")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let total: f64 = data.iter().map(weight).sum();
        let healthy: f64 = data
            .iter()
            .filter(|e| state(e) != "UNHEALTHY")
            .map(weight)
            .sum();
        let health = if !data.is_empty() && data.iter().all(|e| state(e) == "HEALTHCHECKS_OFF") {
            "HEALTHCHECKS_OFF"
        } else if total > 0.0 && healthy * 100.0 / total >= threshold {
            "HEALTHY"
        } else {
            "UNHEALTHY"
        };
        return json_response(
            StatusCode::OK,
            json!({
                "data": {"id": uid, "health": health},
                "next": null,
                "node_id": a.node_id,
            }),
        );
    }
    json_response(
        StatusCode::OK,
        json!({
            "total": data.len(),
            "data": data,
            "next": null,
            "node_id": a.node_id,
        }),
    )
}

/// Kong's `PUT /upstreams/{u}/targets/{t}/healthy` (or `/unhealthy`;
/// POST as older Kong): every address of the target (its id or its
/// `target`) set healthy or unhealthy by hand, 204. Unhealthy by hand
/// stays until set healthy or an active check passes (no passive
/// cool-down). A target that is a name resolving to several addresses:
/// `.../targets/{t}/{address}/healthy` names one.
async fn target_health(
    State(a): State<Arc<Admin>>,
    axum::extract::Path((upstream, target, state)): axum::extract::Path<(String, String, String)>,
) -> Response {
    set_target_health(&a, &upstream, &target, None, &state).await
}

async fn address_health(
    State(a): State<Arc<Admin>>,
    axum::extract::Path((upstream, target, address, state)): axum::extract::Path<(
        String,
        String,
        String,
        String,
    )>,
) -> Response {
    set_target_health(&a, &upstream, &target, Some(&address), &state).await
}

async fn set_target_health(
    a: &Admin,
    upstream: &str,
    target: &str,
    address: Option<&str>,
    state: &str,
) -> Response {
    let healthy = match state {
        "healthy" => true,
        "unhealthy" => false,
        _ => return not_found(),
    };
    let (name, declared) = {
        let current = a.state.lock().await;
        let (Some(uk), Some(tk)) = (entities::kind("upstreams"), entities::kind("targets")) else {
            return not_found();
        };
        let Some(uid) = current.find(uk, upstream, None) else {
            return not_found();
        };
        let name = current
            .get(uk, &uid)
            .and_then(|u| u.get("name"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let declared = current
            .of(tk)
            .filter(|(_, v)| v.get("upstream").and_then(entities::fk_id) == Some(uid.as_str()))
            .find(|(id, v)| {
                id.as_str() == target || v.get("target").and_then(Value::as_str) == Some(target)
            })
            .and_then(|(_, v)| v.get("target").and_then(Value::as_str).map(str::to_string));
        let Some(declared) = declared else {
            return not_found();
        };
        (name, declared)
    };
    // Kong's default port for a target written without one.
    let addr = match address {
        Some(a) => a.to_string(),
        None if declared
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok()) =>
        {
            declared
        }
        None => format!("{declared}:8000"),
    };
    let table = a.gateway.proxy.table.load();
    let Some(u) = table.upstream(&name) else {
        return not_found();
    };
    if u.set_health_by_hand(&addr, healthy) == 0 {
        return json_response(
            StatusCode::NOT_FOUND,
            json!({"message": format!("{addr}: no such address among the target's (a name: use .../targets/{{target}}/{{address}}/{state})")}),
        );
    }
    StatusCode::NO_CONTENT.into_response()
}

/// The Admin API's routes, behind the token check (`/metrics` and
/// `/healthz` are merged in by the caller, outside it).
/// Bronze's `GET /labels`: the routes discovery's labels made, and the
/// labels the gateway could not honour (see `labels`).
async fn labels_report(State(a): State<Arc<Admin>>) -> Response {
    axum::Json(a.gateway.labels.report()).into_response()
}

pub fn router(admin: Arc<Admin>) -> Router {
    Router::new()
        .route("/", axum::routing::get(root))
        .route("/status", axum::routing::get(status))
        .route("/config", axum::routing::get(get_config).post(post_config))
        .route("/labels", axum::routing::get(labels_report))
        .route(
            "/upstreams/{upstream}/health",
            axum::routing::get(upstream_health),
        )
        .route(
            "/upstreams/{upstream}/targets/{target}/{state}",
            axum::routing::put(target_health).post(target_health),
        )
        .route(
            "/upstreams/{upstream}/targets/{target}/{address}/{state}",
            axum::routing::put(address_health).post(address_health),
        )
        .fallback(dispatch)
        // Whole configurations are posted here (axum's default is 2 MiB).
        .layer(axum::extract::DefaultBodyLimit::max(ADMIN_BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(admin.clone(), auth))
        .with_state(admin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kong_error_shapes() {
        assert_eq!(kong_path("paths[1]"), "paths.2");
        assert_eq!(kong_path("config.minute"), "config.minute");
        assert_eq!(
            kong_fields("paths[1]", "bad"),
            json!({"paths": [null, "bad"]})
        );
        assert_eq!(
            kong_fields("config.minute", "bad"),
            json!({"config": {"minute": "bad"}})
        );
        assert_eq!(percent_decode("a%3Ab%2"), "a:b%2");
    }

    #[test]
    fn patch_merges_records_replaces_foreign_keys_and_null_clears() {
        let mut v = json!({"name": "p", "config": {"minute": 5, "hour": 100},
            "service": {"id": "a"}, "tags": ["x"]});
        let changes = json!({"config": {"minute": 10}, "service": {"name": "b"}, "tags": null});
        let Value::Object(changes) = changes else {
            unreachable!()
        };
        merge(&mut v, changes);
        assert_eq!(
            v,
            json!({"name": "p", "config": {"minute": 10, "hour": 100}, "service": {"name": "b"}})
        );
    }
}
