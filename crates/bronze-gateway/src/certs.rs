//! Kong's `snis` sugar on a certificate in the Admin API: `POST
//! /certificates` with `snis: ["a.example.com"]` creates SNI entities for
//! the certificate (listed under `/snis`, unique by name: a name taken is
//! 409), a PUT or PATCH with `snis` replaces them, and a certificate is
//! shown with `snis` as the names of its SNI entities.

use serde_json::{Value, json};

use crate::entities::{self, Entities, Kind};

fn is_certificates(k: &Kind) -> bool {
    k.name == "certificates"
}

/// Takes `snis` out of a certificate's body: the names to give it (None
/// when the body does not mention them).
pub fn take_snis(k: &Kind, body: &mut Value) -> Option<Vec<Value>> {
    if !is_certificates(k) {
        return None;
    }
    let snis = body.as_object_mut()?.remove("snis")?;
    Some(match snis {
        Value::Array(a) => a,
        Value::Null => Vec::new(),
        one => vec![one],
    })
}

/// The SNI entity bodies for `names` (strings, or objects with `name`).
pub fn sni_bodies(cert_id: &str, names: Vec<Value>) -> Vec<Value> {
    names
        .into_iter()
        .map(|n| {
            let mut body = match n {
                Value::Object(o) => Value::Object(o),
                name => json!({ "name": name }),
            };
            if let Some(o) = body.as_object_mut() {
                o.insert("certificate".into(), json!({ "id": cert_id }));
            }
            body
        })
        .collect()
}

/// Removes the SNI entities of certificate `cert_id`.
pub fn remove_snis(e: &mut Entities, cert_id: &str) {
    let Some(k) = entities::kind("snis") else {
        return;
    };
    let ids: Vec<String> = e
        .of(k)
        .filter(|(_, v)| v.get("certificate").and_then(entities::fk_id) == Some(cert_id))
        .map(|(id, _)| id.clone())
        .collect();
    for id in ids {
        e.remove(k, &id);
    }
}

/// A certificate as the Admin API shows it: with `snis`, the names of its
/// SNI entities (sorted), when it has any or kept none inline.
pub fn shown(e: &Entities, k: &Kind, mut v: Value) -> Value {
    if !is_certificates(k) {
        return v;
    }
    let Some(snis) = entities::kind("snis") else {
        return v;
    };
    let id = v
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let mut names: Vec<&str> = e
        .of(snis)
        .filter(|(_, s)| s.get("certificate").and_then(entities::fk_id) == Some(id.as_str()))
        .filter_map(|(_, s)| s.get("name").and_then(Value::as_str))
        .collect();
    names.sort_unstable();
    if let Some(o) = v.as_object_mut()
        && !o.contains_key("snis")
    {
        o.insert("snis".into(), json!(names));
    }
    v
}
