//! The Admin API's entities: one table of Kong's entity kinds (URL paths,
//! endpoint keys, unique fields, foreign keys), and the entities themselves
//! as JSON objects per kind, keyed by id. Nothing here knows a kind's
//! fields beyond that table: a whole set of entities becomes Kong's *flat*
//! declarative document ([`Entities::document`]) which the normal parser
//! and compiler validate, so a kind whose declarative struct lands later
//! (consumers, plugins, certificates, credentials) works without changes
//! here. A declarative document (file or `POST /config`) is turned into
//! entities by [`Entities::from_document`] (nested children moved to the
//! top level with their parent's id).

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::declarative::Invalid;

/// A foreign key of a kind.
#[derive(Debug)]
pub struct Foreign {
    /// The field holding `{"id": ...}`.
    pub field: &'static str,
    /// The kind it points to.
    pub kind: &'static str,
    /// Kong's `on_delete`: cascade (true) or restrict.
    pub cascade: bool,
}

/// One of Kong's entity kinds.
#[derive(Debug)]
pub struct Kind {
    /// The collection's key in a declarative document (and in the store).
    pub name: &'static str,
    /// Its top-level Admin API path segment, when it has one.
    pub path: Option<&'static str>,
    /// Its path segment under a parent (`/consumers/{c}/key-auth`).
    pub scoped: &'static str,
    /// The field that finds it in a URL besides its id.
    pub endpoint_key: Option<&'static str>,
    /// Groups of fields whose values no two entities share.
    pub unique: &'static [&'static [&'static str]],
    pub foreign: &'static [Foreign],
    /// Fields the Admin API generates when a new entity lacks them
    /// (Kong's key-auth `key`, jwt `key` and `secret`): 32 hex digits.
    pub generated: &'static [&'static str],
}

const fn fk(field: &'static str, kind: &'static str, cascade: bool) -> Foreign {
    Foreign {
        field,
        kind,
        cascade,
    }
}

/// Parents before children (the order documents are read in).
pub static KINDS: &[Kind] = &[
    Kind {
        name: "certificates",
        path: Some("certificates"),
        scoped: "certificates",
        endpoint_key: None,
        unique: &[],
        foreign: &[],
        generated: &[],
    },
    Kind {
        name: "ca_certificates",
        path: Some("ca_certificates"),
        scoped: "ca_certificates",
        endpoint_key: None,
        unique: &[],
        foreign: &[],
        generated: &[],
    },
    Kind {
        name: "services",
        path: Some("services"),
        scoped: "services",
        endpoint_key: Some("name"),
        unique: &[&["name"]],
        // Kong refuses to delete a certificate a service presents.
        foreign: &[fk("client_certificate", "certificates", false)],
        generated: &[],
    },
    Kind {
        name: "upstreams",
        path: Some("upstreams"),
        scoped: "upstreams",
        endpoint_key: Some("name"),
        unique: &[&["name"]],
        foreign: &[fk("client_certificate", "certificates", false)],
        generated: &[],
    },
    Kind {
        name: "consumers",
        path: Some("consumers"),
        scoped: "consumers",
        endpoint_key: Some("username"),
        unique: &[&["username"], &["custom_id"]],
        foreign: &[],
        generated: &[],
    },
    // Kong's SNI entities; a certificate's `snis: ["a.example.com"]` is
    // sugar for these.
    Kind {
        name: "snis",
        path: Some("snis"),
        scoped: "snis",
        endpoint_key: Some("name"),
        unique: &[&["name"]],
        foreign: &[fk("certificate", "certificates", true)],
        generated: &[],
    },
    Kind {
        name: "routes",
        path: Some("routes"),
        scoped: "routes",
        endpoint_key: Some("name"),
        unique: &[&["name"]],
        // Kong refuses to delete a service that routes use.
        foreign: &[fk("service", "services", false)],
        generated: &[],
    },
    Kind {
        name: "targets",
        path: None,
        scoped: "targets",
        endpoint_key: Some("target"),
        unique: &[&["upstream", "target"]],
        foreign: &[fk("upstream", "upstreams", true)],
        generated: &[],
    },
    Kind {
        name: "plugins",
        path: Some("plugins"),
        scoped: "plugins",
        endpoint_key: None,
        unique: &[&["name", "service", "route", "consumer"]],
        foreign: &[
            fk("service", "services", true),
            fk("route", "routes", true),
            fk("consumer", "consumers", true),
        ],
        generated: &[],
    },
    Kind {
        name: "keyauth_credentials",
        path: Some("key-auths"),
        scoped: "key-auth",
        endpoint_key: Some("key"),
        unique: &[&["key"]],
        foreign: &[fk("consumer", "consumers", true)],
        generated: &["key"],
    },
    Kind {
        name: "basicauth_credentials",
        path: Some("basic-auths"),
        scoped: "basic-auth",
        endpoint_key: Some("username"),
        unique: &[&["username"]],
        foreign: &[fk("consumer", "consumers", true)],
        generated: &[],
    },
    Kind {
        name: "jwt_secrets",
        path: Some("jwts"),
        scoped: "jwt",
        endpoint_key: Some("key"),
        unique: &[&["key"]],
        foreign: &[fk("consumer", "consumers", true)],
        generated: &["key", "secret"],
    },
    Kind {
        name: "hmacauth_credentials",
        path: Some("hmac-auths"),
        scoped: "hmac-auth",
        endpoint_key: Some("username"),
        unique: &[&["username"]],
        foreign: &[fk("consumer", "consumers", true)],
        generated: &["secret"],
    },
    Kind {
        name: "acls",
        path: Some("acls"),
        scoped: "acls",
        endpoint_key: None,
        unique: &[&["consumer", "group"]],
        foreign: &[fk("consumer", "consumers", true)],
        generated: &[],
    },
];

pub fn kind(name: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.name == name)
}

pub fn by_path(path: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.path == Some(path))
}

/// Fields the store keeps but a declarative document does not carry.
pub const TIMESTAMPS: [&str; 2] = ["created_at", "updated_at"];

pub fn is_uuid(s: &str) -> bool {
    uuid::Uuid::try_parse(s).is_ok()
}

pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A UUID (v5) derived from `seed`: the same seed, the same id.
pub fn stable_id(seed: &str) -> String {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, seed.as_bytes()).to_string()
}

/// 32 random hex digits, as Kong generates credentials' keys.
pub fn new_key() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

pub fn now() -> i64 {
    i64::try_from(bronze_runtime::unix_time().as_secs()).unwrap_or(i64::MAX)
}

/// The id a foreign-key field holds (`{"id": ...}`), if any.
pub fn fk_id(v: &Value) -> Option<&str> {
    v.get("id").and_then(Value::as_str)
}

/// Every entity, per kind, by id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Entities {
    pub by_kind: BTreeMap<&'static str, BTreeMap<String, Value>>,
}

impl Entities {
    pub fn of(&self, kind: &Kind) -> impl Iterator<Item = (&String, &Value)> {
        self.by_kind.get(kind.name).into_iter().flatten()
    }

    pub fn get(&self, kind: &Kind, id: &str) -> Option<&Value> {
        self.by_kind.get(kind.name).and_then(|m| m.get(id))
    }

    pub fn insert(&mut self, kind: &Kind, id: String, v: Value) {
        self.by_kind.entry(kind.name).or_default().insert(id, v);
    }

    pub fn remove(&mut self, kind: &Kind, id: &str) -> Option<Value> {
        self.by_kind.get_mut(kind.name).and_then(|m| m.remove(id))
    }

    /// Finds by id, or by endpoint key; `scope` (a foreign-key field and
    /// id) limits the search to one parent's children.
    pub fn find(&self, kind: &Kind, key: &str, scope: Option<(&str, &str)>) -> Option<String> {
        let in_scope =
            |v: &Value| scope.is_none_or(|(field, id)| v.get(field).and_then(fk_id) == Some(id));
        if let Some(v) = self.get(kind, key)
            && in_scope(v)
        {
            return Some(key.to_string());
        }
        let field = kind.endpoint_key?;
        self.of(kind)
            .find(|(_, v)| in_scope(v) && v.get(field).and_then(Value::as_str) == Some(key))
            .map(|(id, _)| id.clone())
    }

    /// Kong's flat declarative document of these entities, and where each
    /// entity sits in it (kind, id) -> index in its collection. Empty
    /// collections are left out (so a kind this build cannot parse yet
    /// only matters once one is created).
    pub fn document(&self) -> (Value, BTreeMap<(&'static str, String), usize>) {
        let mut doc = Map::new();
        doc.insert("_format_version".into(), "3.0".into());
        let mut index = BTreeMap::new();
        for k in KINDS {
            let items: Vec<Value> = self
                .of(k)
                .enumerate()
                .map(|(i, (id, v))| {
                    index.insert((k.name, id.clone()), i);
                    let mut v = v.clone();
                    if let Some(o) = v.as_object_mut() {
                        for t in TIMESTAMPS {
                            o.remove(t);
                        }
                    }
                    v
                })
                .collect();
            if !items.is_empty() {
                doc.insert(k.name.into(), Value::Array(items));
            }
        }
        (Value::Object(doc), index)
    }

    /// Entities from a declarative document (nested or flat): children
    /// nested in a parent (`services[].routes`, `consumers[].plugins`, ...)
    /// move to the top level with `{"id": parent}`; references by name
    /// become ids; entities without an id get one. Errors name the field
    /// in the document as written.
    pub fn from_document(doc: &Value) -> Result<Entities, Invalid> {
        let mut out = Entities::default();
        let Some(top) = doc.as_object() else {
            return Err(Invalid::new("(document)", "expected an object"));
        };
        let at = now();
        // (kind, id, field, reference as written, where)
        let mut pending: Vec<(&'static Kind, String, &'static str, Value, String)> = Vec::new();
        for k in KINDS {
            let Some(items) = top.get(k.name) else {
                continue;
            };
            let Some(items) = items.as_array() else {
                return Err(Invalid::new(k.name, "expected an array"));
            };
            for (i, item) in items.iter().enumerate() {
                take(
                    &mut out,
                    &mut pending,
                    k,
                    item.clone(),
                    None,
                    format!("{}[{i}]", k.name),
                    at,
                )?;
            }
        }
        for (k, id, field, r, place) in pending {
            let f = k
                .foreign
                .iter()
                .find(|f| f.field == field)
                .expect("pending references are foreign keys");
            let parent = kind(f.kind).expect("foreign kinds exist");
            let key = match &r {
                Value::String(s) => Some(s.as_str()),
                Value::Object(o) => o
                    .get("id")
                    .or_else(|| parent.endpoint_key.and_then(|e| o.get(e)))
                    .and_then(Value::as_str),
                _ => None,
            };
            let found = key
                .and_then(|key| out.find(parent, key, None))
                .ok_or_else(|| {
                    Invalid::new(
                        format!("{place}.{field}"),
                        format!("{r}: no {} with this name or id", f.kind),
                    )
                })?;
            if let Some(Value::Object(o)) = out.by_kind.get_mut(k.name).and_then(|m| m.get_mut(&id))
            {
                o.insert(field.into(), serde_json::json!({ "id": found }));
            }
        }
        Ok(out)
    }
}

/// Adds one entity (and its nested children) from a document.
fn take(
    out: &mut Entities,
    pending: &mut Vec<(&'static Kind, String, &'static str, Value, String)>,
    k: &'static Kind,
    item: Value,
    parent: Option<(&'static str, String)>,
    place: String,
    at: i64,
) -> Result<(), Invalid> {
    let Value::Object(mut o) = item else {
        return Err(Invalid::new(place, "expected an object"));
    };
    let id = match o.get("id") {
        // Kong's DB-less habit: an entity without an id gets one derived
        // from what it is and where, so applying the same document again
        // keeps every id (and the state kept per entity, such as
        // rate-limiting counters).
        None | Some(Value::Null) => {
            let seed = format!(
                "{}|{}|{place}|{}",
                k.name,
                parent.as_ref().map_or("", |(_, pid)| pid.as_str()),
                Value::Object(o.clone())
            );
            stable_id(&seed)
        }
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(_) => return Err(Invalid::new(format!("{place}.id"), "expected a string")),
    };
    if out.get(k, &id).is_some() {
        return Err(Invalid::new(
            format!("{place}.id"),
            format!("{id:?} appears twice"),
        ));
    }
    o.insert("id".into(), Value::String(id.clone()));
    // Nested children: any kind with a foreign key to this one, under its
    // collection name.
    let mut children = Vec::new();
    for child in KINDS {
        if let Some(f) = child.foreign.iter().find(|f| f.kind == k.name)
            && let Some(v) = o.remove(child.name)
        {
            let Value::Array(items) = v else {
                return Err(Invalid::new(
                    format!("{place}.{}", child.name),
                    "expected an array",
                ));
            };
            children.push((child, f.field, items));
        }
    }
    for f in k.foreign {
        match (&parent, o.get(f.field)) {
            (Some((field, pid)), None | Some(Value::Null)) if *field == f.field => {
                o.insert(f.field.into(), serde_json::json!({ "id": pid }));
            }
            (Some((field, _)), Some(_)) if *field == f.field => {
                return Err(Invalid::new(
                    format!("{place}.{}", f.field),
                    "a nested entity takes its parent from where it is nested",
                ));
            }
            (_, None | Some(Value::Null)) => {
                o.remove(f.field);
            }
            (_, Some(r)) => pending.push((k, id.clone(), f.field, r.clone(), place.clone())),
        }
    }
    o.entry("created_at").or_insert(at.into());
    o.entry("updated_at").or_insert(at.into());
    out.insert(k, id.clone(), Value::Object(o));
    for (child, field, items) in children {
        for (j, item) in items.into_iter().enumerate() {
            // Kong's sugar: a bare string names the child by its endpoint
            // key (a certificate's `snis: ["a.example.com"]`).
            let item = match (item, child.endpoint_key) {
                (Value::String(s), Some(key)) => serde_json::json!({ key: s }),
                (item, _) => item,
            };
            take(
                out,
                pending,
                child,
                item,
                Some((field, id.clone())),
                format!("{place}.{}[{j}]", child.name),
                at,
            )?;
        }
    }
    Ok(())
}

/// Reads a `application/x-www-form-urlencoded` body as Kong does:
/// `paths[]=/a&paths[]=/b`, `paths=/a` repeated, `paths[1]=/b`,
/// `service.id=...`, `config.minute=5`. Values stay strings (an empty one
/// is null); [`coerce`] turns them into what the schema expects.
pub fn form(body: &[u8]) -> Result<Value, Invalid> {
    form_fields(form_urlencoded::parse(body))
}

/// A form's fields (from a urlencoded or a `multipart/form-data` body)
/// as Kong reads them: see [`form`].
pub fn form_fields<'a>(
    fields: impl IntoIterator<Item = (Cow<'a, str>, Cow<'a, str>)>,
) -> Result<Value, Invalid> {
    let mut root = Value::Object(Map::new());
    for (key, value) in fields {
        let value = if value.is_empty() {
            Value::Null
        } else {
            Value::String(value.into_owned())
        };
        let parts: Vec<&str> = key.split('.').collect();
        put(&mut root, &parts, value).map_err(|why| Invalid::new(key.as_ref(), why))?;
    }
    Ok(root)
}

/// Sets `parts` (a form key split at dots) in `node`.
fn put(node: &mut Value, parts: &[&str], value: Value) -> Result<(), &'static str> {
    let Some((part, rest)) = parts.split_first() else {
        return Ok(());
    };
    let last = rest.is_empty();
    let (name, index) = match part.split_once('[') {
        Some((name, i)) => (name, Some(i.trim_end_matches(']'))),
        None => (*part, None),
    };
    if name.is_empty() {
        return Err("expected a field name");
    }
    let Some(obj) = node.as_object_mut() else {
        return Err("conflicts with another field");
    };
    match index {
        None if last => {
            match obj.get_mut(name) {
                // Repeated `paths=/a&paths=/b`: an array.
                Some(Value::Array(a)) => a.push(value),
                Some(old @ Value::String(_)) => {
                    let first = old.take();
                    *old = Value::Array(vec![first, value]);
                }
                _ => {
                    obj.insert(name.to_string(), value);
                }
            }
            Ok(())
        }
        None => put(
            obj.entry(name.to_string())
                .or_insert_with(|| Value::Object(Map::new())),
            rest,
            value,
        ),
        Some(i) => {
            let slot = obj
                .entry(name.to_string())
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::String(_) = slot {
                let first = slot.take();
                *slot = Value::Array(vec![first]);
            }
            let Value::Array(a) = slot else {
                return Err("conflicts with another field");
            };
            let i = if i.is_empty() {
                a.len()
            } else {
                // Kong's form indices start at 1.
                i.parse::<usize>()
                    .ok()
                    .filter(|i| (1..=1000).contains(i))
                    .map(|i| i - 1)
                    .ok_or("expected [] or [1..1000]")?
            };
            if a.len() <= i {
                a.resize(i + 1, Value::Null);
            }
            if last {
                a[i] = value;
                Ok(())
            } else {
                if !a[i].is_object() {
                    a[i] = Value::Object(Map::new());
                }
                put(&mut a[i], rest, value)
            }
        }
    }
}

/// The value at a serde path (`paths[0]`, `config.minute`) in `v`.
pub fn at_path<'a>(v: &'a mut Value, path: &str) -> Option<&'a mut Value> {
    let mut node = v;
    for part in path.split('.') {
        let (name, indices) = match part.find('[') {
            Some(p) => (&part[..p], &part[p..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            node = node.get_mut(name)?;
        }
        for i in indices.split('[').filter(|s| !s.is_empty()) {
            node = node.get_mut(i.trim_end_matches(']').parse::<usize>().ok()?)?;
        }
    }
    Some(node)
}

/// Turns a form string into what a schema error says was expected (a
/// number, a boolean, a list): true when it changed something.
pub fn coerce(v: &mut Value, message: &str) -> bool {
    let Some(text) = v.as_str() else {
        return false;
    };
    let expected = message.rsplit("expected ").next().unwrap_or("");
    let new = if expected.starts_with("a sequence") {
        Some(Value::Array(vec![v.take()]))
    } else if expected.starts_with("a boolean") {
        match text {
            "true" => Some(Value::Bool(true)),
            "false" => Some(Value::Bool(false)),
            _ => None,
        }
    } else if expected.starts_with('u') || expected.starts_with('i') || expected.starts_with('f') {
        text.parse::<i64>()
            .map(Value::from)
            .ok()
            .or_else(|| text.parse::<u64>().map(Value::from).ok())
            .or_else(|| text.parse::<f64>().ok().map(Value::from))
    } else {
        None
    };
    match new {
        Some(n) => {
            *v = n;
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_read_as_kong_reads_them() {
        let v = form(b"name=a&paths[]=/x&paths[]=/y&methods=GET&methods=POST&service.id=s1&config.minute=5&hosts[2]=b&hosts[1]=a&tags=").unwrap();
        assert_eq!(
            v,
            serde_json::json!({"name": "a", "paths": ["/x", "/y"], "methods": ["GET", "POST"],
                "service": {"id": "s1"}, "config": {"minute": "5"}, "hosts": ["a", "b"], "tags": null})
        );
        let mut port = Value::from("8080");
        assert!(coerce(
            &mut port,
            "invalid type: string \"8080\", expected u16"
        ));
        assert_eq!(port, 8080);
        let mut strip = Value::from("false");
        assert!(coerce(
            &mut strip,
            "invalid type: string \"false\", expected a boolean"
        ));
        assert_eq!(strip, false);
        let mut paths = Value::from("/a");
        assert!(coerce(
            &mut paths,
            "invalid type: string \"/a\", expected a sequence"
        ));
        assert_eq!(paths, serde_json::json!(["/a"]));
        assert!(!coerce(&mut Value::from("x"), "expected u16"));
        let mut doc = serde_json::json!({"routes": [{"paths": ["/a", "/b"]}]});
        assert_eq!(
            at_path(&mut doc, "routes[0].paths[1]").cloned(),
            Some(Value::from("/b"))
        );
    }

    #[test]
    fn nested_documents_become_flat_entities() {
        let doc = serde_json::json!({"_format_version": "3.0",
            "services": [{"name": "s", "url": "http://x", "routes": [{"name": "r", "paths": ["/"]}]}],
            "upstreams": [{"name": "u", "targets": [{"target": "a:1"}]}],
            "routes": [{"name": "r2", "paths": ["/2"], "service": "s"}]});
        let e = Entities::from_document(&doc).unwrap();
        let s = kind("services").unwrap();
        let r = kind("routes").unwrap();
        let sid = e.find(s, "s", None).unwrap();
        assert!(is_uuid(&sid));
        for name in ["r", "r2"] {
            let rid = e.find(r, name, None).unwrap();
            assert_eq!(e.get(r, &rid).unwrap()["service"]["id"], sid.as_str());
        }
        assert!(e.get(s, &sid).unwrap().get("routes").is_none());
        let t = kind("targets").unwrap();
        assert_eq!(e.of(t).count(), 1);
        let (flat, _) = e.document();
        let d = crate::declarative::parse_value(flat).unwrap();
        assert_eq!(d.routes.len(), 2);
        assert!(crate::flat::compile(&d, &Default::default()).is_ok());

        // Kinds whose declarative structs live elsewhere flatten the same
        // way: credentials and plugins nested in consumers, services, routes.
        let doc = serde_json::json!({
            "consumers": [{"username": "ann", "keyauth_credentials": [{"key": "k1"}],
                           "plugins": [{"name": "rate-limiting", "config": {"minute": 5}}]}],
            "services": [{"name": "s", "url": "http://x", "plugins": [{"name": "cors"}],
                          "routes": [{"name": "r", "paths": ["/"], "plugins": [{"name": "key-auth"}]}]}],
            "plugins": [{"name": "prometheus"}, {"name": "acl", "consumer": "ann", "route": "r"}]});
        let e = Entities::from_document(&doc).unwrap();
        let c = kind("consumers").unwrap();
        let cid = e.find(c, "ann", None).unwrap();
        let keys = kind("keyauth_credentials").unwrap();
        let key = e.find(keys, "k1", Some(("consumer", &cid))).unwrap();
        assert_eq!(e.get(keys, &key).unwrap()["consumer"]["id"], cid.as_str());
        let plugins = kind("plugins").unwrap();
        let scope = |name: &str| {
            let (_, p) = e
                .of(plugins)
                .find(|(_, p)| p["name"] == name)
                .unwrap_or_else(|| panic!("{name}"));
            ["service", "route", "consumer"].map(|f| p.get(f).is_some())
        };
        assert_eq!(scope("rate-limiting"), [false, false, true]);
        assert_eq!(scope("cors"), [true, false, false]);
        assert_eq!(scope("key-auth"), [false, true, false]);
        assert_eq!(scope("prometheus"), [false, false, false]);
        assert_eq!(scope("acl"), [false, true, true]);
        let (flat, _) = e.document();
        assert_eq!(flat["keyauth_credentials"][0]["key"], "k1");
        assert!(flat["consumers"][0].get("keyauth_credentials").is_none());
        assert!(flat["consumers"][0].get("created_at").is_none());

        let bad = serde_json::json!({"routes": [{"name": "x", "service": "nope"}]});
        assert_eq!(
            Entities::from_document(&bad).unwrap_err().field,
            "routes[0].service"
        );
    }
}
