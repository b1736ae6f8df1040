//! The behaviour every [`Store`] backend must have, as one suite: the
//! redb backend runs it in its tests, and a second backend (etcd) runs the
//! same functions against its own server. Each check uses its own
//! namespaces, so the suite may run against a store that holds other data.

use crate::{Op, Store};

fn keys(v: Vec<(String, Vec<u8>)>) -> Vec<String> {
    v.into_iter().map(|(k, _)| k).collect()
}

/// Every check below, on one store. Panics on the first difference.
pub fn run(store: &dyn Store) {
    put_get_overwrite_delete(store);
    list_is_in_key_order(store);
    scan_pages_by_prefix(store);
    apply_is_all_or_nothing_visible(store);
    values_are_bytes(store);
}

pub fn put_get_overwrite_delete(s: &dyn Store) {
    let ns = "conformance.basic";
    assert_eq!(s.get(ns, "a").expect("get"), None, "missing key");
    s.put(ns, "a", b"1").expect("put");
    assert_eq!(s.get(ns, "a").expect("get").as_deref(), Some(&b"1"[..]));
    s.put(ns, "a", b"2").expect("overwrite");
    assert_eq!(s.get(ns, "a").expect("get").as_deref(), Some(&b"2"[..]));
    assert!(
        s.delete(ns, "a").expect("delete"),
        "delete says it was there"
    );
    assert!(
        !s.delete(ns, "a").expect("delete"),
        "second delete says it was not"
    );
    assert_eq!(s.get(ns, "a").expect("get"), None);
    assert_eq!(
        s.get("conformance.never-written", "a").expect("get"),
        None,
        "a namespace never written reads as empty"
    );
    assert!(
        s.list("conformance.never-written")
            .expect("list")
            .is_empty()
    );
}

pub fn list_is_in_key_order(s: &dyn Store) {
    let ns = "conformance.order";
    for k in ["b", "a/2", "c", "a/10", "a"] {
        s.put(ns, k, k.as_bytes()).expect("put");
    }
    assert_eq!(
        keys(s.list(ns).expect("list")),
        vec!["a", "a/10", "a/2", "b", "c"],
        "byte order of keys"
    );
    for (k, v) in s.list(ns).expect("list") {
        assert_eq!(k.as_bytes(), v.as_slice());
    }
}

pub fn scan_pages_by_prefix(s: &dyn Store) {
    let ns = "conformance.scan";
    s.apply(&[
        Op::put(ns, "svc/a/1", b"x".to_vec()),
        Op::put(ns, "svc/a/2", b"y".to_vec()),
        Op::put(ns, "svc/a/3", b"z".to_vec()),
        Op::put(ns, "svc/b/1", b"w".to_vec()),
        Op::put(ns, "svc/a", b"v".to_vec()),
    ])
    .expect("apply");
    assert_eq!(
        keys(s.scan(ns, "svc/a/", None, 10).expect("scan")),
        vec!["svc/a/1", "svc/a/2", "svc/a/3"]
    );
    let first = keys(s.scan(ns, "svc/a/", None, 2).expect("scan"));
    assert_eq!(first, vec!["svc/a/1", "svc/a/2"]);
    let rest = keys(s.scan(ns, "svc/a/", Some(&first[1]), 2).expect("scan"));
    assert_eq!(rest, vec!["svc/a/3"], "the page after the last key seen");
    assert!(s.scan(ns, "svc/c/", None, 10).expect("scan").is_empty());
    assert!(
        s.scan(ns, "svc/a/", Some("svc/a/3"), 10)
            .expect("scan")
            .is_empty()
    );
    assert_eq!(s.scan(ns, "", None, 100).expect("scan").len(), 5);
}

pub fn apply_is_all_or_nothing_visible(s: &dyn Store) {
    let (a, b) = ("conformance.txn-a", "conformance.txn-b");
    s.put(a, "gone", b"1").expect("put");
    s.apply(&[
        Op::delete(a, "gone"),
        Op::put(a, "k", b"1".to_vec()),
        Op::put(b, "k", b"2".to_vec()),
        Op::put(a, "k", b"3".to_vec()),
    ])
    .expect("apply");
    assert_eq!(s.get(a, "gone").expect("get"), None);
    assert_eq!(
        s.get(a, "k").expect("get").as_deref(),
        Some(&b"3"[..]),
        "later operations of one transaction win"
    );
    assert_eq!(s.get(b, "k").expect("get").as_deref(), Some(&b"2"[..]));
    s.apply(&[]).expect("an empty transaction");
}

pub fn values_are_bytes(s: &dyn Store) {
    let ns = "conformance.bytes";
    let big: Vec<u8> = (0..(1usize << 20)).map(|i| (i % 251) as u8).collect();
    s.put(ns, "big", &big).expect("put 1 MiB");
    s.put(ns, "empty", b"").expect("put empty");
    s.put(ns, "binary", &[0, 255, 0, 10]).expect("put");
    assert_eq!(s.get(ns, "big").expect("get"), Some(big));
    assert_eq!(s.get(ns, "empty").expect("get"), Some(Vec::new()));
    assert_eq!(s.get(ns, "binary").expect("get"), Some(vec![0, 255, 0, 10]));
}

/// What a committed write survives: the store closed and opened again
/// (`open` opens the same underlying data each time).
pub fn durability(open: &dyn Fn() -> Box<dyn Store>) {
    let ns = "conformance.durable";
    {
        let s = open();
        s.put(ns, "a", b"1").expect("put");
        s.apply(&[Op::put(ns, "b", b"2".to_vec()), Op::delete(ns, "a")])
            .expect("apply");
    }
    let s = open();
    assert_eq!(keys(s.list(ns).expect("list")), vec!["b"]);
}
