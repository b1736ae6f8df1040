//! DNS wire format: just what an authoritative server for synthetic names
//! needs, written for the hot path (no allocation to parse a query, one
//! reusable buffer to write the answer).
//!
//! Parsing reads the header, the one question and the OPT record (EDNS0)
//! and rejects anything malformed with the rcode a client should see.
//! Writing appends records under a size limit: a record that would not fit
//! is left out whole, and leaving out an answer sets TC.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const TYPE_A: u16 = 1;
pub const TYPE_NS: u16 = 2;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_SOA: u16 = 6;
pub const TYPE_TXT: u16 = 16;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_SRV: u16 = 33;
pub const TYPE_OPT: u16 = 41;
pub const TYPE_IXFR: u16 = 251;
pub const TYPE_AXFR: u16 = 252;
pub const TYPE_ANY: u16 = 255;
pub const CLASS_IN: u16 = 1;
pub const CLASS_ANY: u16 = 255;

pub const HEADER_LEN: usize = 12;
/// Size of an OPT record without options.
pub const OPT_LEN: usize = 11;
/// Largest name in wire format (RFC 1035 §2.3.4).
pub const MAX_NAME: usize = 255;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rcode {
    NoError = 0,
    FormErr = 1,
    ServFail = 2,
    NxDomain = 3,
    NotImp = 4,
    Refused = 5,
    /// Extended rcode 16 (EDNS version not supported).
    BadVers = 16,
}

impl Rcode {
    pub fn as_str(self) -> &'static str {
        match self {
            Rcode::NoError => "NOERROR",
            Rcode::FormErr => "FORMERR",
            Rcode::ServFail => "SERVFAIL",
            Rcode::NxDomain => "NXDOMAIN",
            Rcode::NotImp => "NOTIMP",
            Rcode::Refused => "REFUSED",
            Rcode::BadVers => "BADVERS",
        }
    }
}

/// A query name, lower-cased, as its labels.
#[derive(Clone)]
pub struct Name {
    /// Label bytes back to back (no length prefixes).
    bytes: [u8; MAX_NAME],
    /// (start, len) of each label in `bytes`.
    labels: [(u8, u8); 128],
    count: usize,
    /// Length of the name in wire format (with length bytes and the root).
    wire_len: usize,
}

impl Name {
    pub fn label_count(&self) -> usize {
        self.count
    }

    /// Label `i`, counting from the left.
    pub fn label(&self, i: usize) -> &[u8] {
        let (start, len) = self.labels[i];
        &self.bytes[start as usize..start as usize + len as usize]
    }

    /// Wire offset (within the name) where label `i` starts.
    pub fn label_offset(&self, i: usize) -> usize {
        (0..i).map(|j| self.labels[j].1 as usize + 1).sum()
    }

    pub fn wire_len(&self) -> usize {
        self.wire_len
    }

    /// Whether the name ends with `suffix` (lower-case labels).
    pub fn ends_with(&self, suffix: &[Vec<u8>]) -> bool {
        suffix.len() <= self.count
            && suffix
                .iter()
                .rev()
                .zip((0..self.count).rev())
                .all(|(s, i)| self.label(i) == s.as_slice())
    }
}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for i in 0..self.count {
            write!(f, "{}.", String::from_utf8_lossy(self.label(i)))?;
        }
        if self.count == 0 {
            f.write_str(".")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    pub payload: u16,
    pub version: u8,
    pub dnssec_ok: bool,
}

#[derive(Debug, Clone)]
pub struct Query {
    pub id: u16,
    pub opcode: u8,
    pub recursion_desired: bool,
    pub checking_disabled: bool,
    pub name: Name,
    pub qtype: u16,
    pub qclass: u16,
    /// End of the question section in the packet (it is echoed as is).
    pub question_end: usize,
    pub edns: Option<Edns>,
}

/// Why a packet got no normal answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Not worth an answer: shorter than a header, or a response (answering
    /// responses would make us a reflector).
    Drop,
    /// Answer with this rcode, echoing the header (and the question when it
    /// could be read).
    Reply {
        rcode: Rcode,
        question_end: Option<usize>,
    },
}

fn u16_at(p: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*p.get(at)?, *p.get(at + 1)?]))
}

/// Skips a (possibly compressed) name; returns the offset after it.
fn skip_name(p: &[u8], mut at: usize) -> Option<usize> {
    let mut total = 0usize;
    loop {
        let len = *p.get(at)? as usize;
        match len & 0xC0 {
            0x00 => {
                at += 1;
                if len == 0 {
                    return Some(at);
                }
                total += len + 1;
                if total > MAX_NAME {
                    return None;
                }
                at += len;
                if at > p.len() {
                    return None;
                }
            }
            0xC0 => {
                p.get(at + 1)?;
                return Some(at + 2);
            }
            _ => return None,
        }
    }
}

/// Reads the question name at `at`, which may not use compression (nothing
/// precedes it to point to). Returns the name and the offset after it.
fn read_question_name(p: &[u8], mut at: usize) -> Option<(Name, usize)> {
    let mut name = Name {
        bytes: [0; MAX_NAME],
        labels: [(0, 0); 128],
        count: 0,
        wire_len: 1,
    };
    let mut used = 0usize;
    loop {
        let len = *p.get(at)? as usize;
        at += 1;
        if len == 0 {
            return Some((name, at));
        }
        if len > 63 {
            return None;
        }
        name.wire_len += len + 1;
        if name.wire_len > MAX_NAME {
            return None;
        }
        let label = p.get(at..at + len)?;
        for (i, b) in label.iter().enumerate() {
            name.bytes[used + i] = b.to_ascii_lowercase();
        }
        name.labels[name.count] = (u8::try_from(used).ok()?, u8::try_from(len).ok()?);
        name.count += 1;
        used += len;
        at += len;
    }
}

/// Parses a query. Never panics, whatever the bytes.
pub fn parse(p: &[u8]) -> Result<Query, ParseError> {
    if p.len() < HEADER_LEN {
        return Err(ParseError::Drop);
    }
    let flags = u16_at(p, 2).ok_or(ParseError::Drop)?;
    if flags & 0x8000 != 0 {
        return Err(ParseError::Drop);
    }
    let opcode = ((flags >> 11) & 0x0F) as u8;
    let qdcount = u16_at(p, 4).ok_or(ParseError::Drop)?;
    let ancount = u16_at(p, 6).ok_or(ParseError::Drop)?;
    let nscount = u16_at(p, 8).ok_or(ParseError::Drop)?;
    let arcount = u16_at(p, 10).ok_or(ParseError::Drop)?;
    let formerr = |question_end| ParseError::Reply {
        rcode: Rcode::FormErr,
        question_end,
    };
    if opcode != 0 {
        return Err(ParseError::Reply {
            rcode: Rcode::NotImp,
            question_end: None,
        });
    }
    if qdcount != 1 {
        return Err(formerr(None));
    }
    let (name, at) = read_question_name(p, HEADER_LEN).ok_or(formerr(None))?;
    let qtype = u16_at(p, at).ok_or(formerr(None))?;
    let qclass = u16_at(p, at + 2).ok_or(formerr(None))?;
    let question_end = at + 4;

    // Skip answer and authority records (normally none), then look for OPT.
    let mut at = question_end;
    let mut edns = None;
    for i in 0..(ancount as usize + nscount as usize + arcount as usize) {
        let name_start = at;
        at = skip_name(p, at).ok_or(formerr(Some(question_end)))?;
        let rtype = u16_at(p, at).ok_or(formerr(Some(question_end)))?;
        let rclass = u16_at(p, at + 2).ok_or(formerr(Some(question_end)))?;
        let ttl_hi = u16_at(p, at + 4).ok_or(formerr(Some(question_end)))?;
        let rdlen = u16_at(p, at + 8).ok_or(formerr(Some(question_end)))? as usize;
        at += 10;
        if at + rdlen > p.len() {
            return Err(formerr(Some(question_end)));
        }
        at += rdlen;
        let in_additional = i >= ancount as usize + nscount as usize;
        if rtype == TYPE_OPT {
            // One OPT, in the additional section, owned by the root.
            if !in_additional || edns.is_some() || p[name_start] != 0 {
                return Err(formerr(Some(question_end)));
            }
            edns = Some(Edns {
                payload: rclass,
                version: (ttl_hi & 0xFF) as u8,
                dnssec_ok: u16_at(p, name_start + 7).is_some_and(|f| f & 0x8000 != 0),
            });
        }
    }
    Ok(Query {
        id: u16_at(p, 0).unwrap_or(0),
        opcode,
        recursion_desired: flags & 0x0100 != 0,
        checking_disabled: flags & 0x0010 != 0,
        name,
        qtype,
        qclass,
        question_end,
        edns,
    })
}

/// Which section records are being written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Answer,
    Authority,
    Additional,
}

/// An offset a compression pointer can hold: the pointer has 14 bits, so a
/// name written past 0x3FFF (in a large TCP answer) cannot be pointed to
/// and must be written in full instead (RFC 1035 §4.1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pointer(u16);

impl Pointer {
    pub const MAX: usize = 0x3FFF;
    /// The question's name, right after the header.
    pub const QUESTION: Pointer = Pointer(12);

    /// A pointer to `offset`, or `None` when it is past [`Pointer::MAX`].
    pub fn to(offset: usize) -> Option<Pointer> {
        if offset <= Self::MAX {
            u16::try_from(offset).ok().map(Pointer)
        } else {
            None
        }
    }

    fn wire(self) -> [u8; 2] {
        (0xC000 | self.0).to_be_bytes()
    }
}

/// A name to write: a compression pointer to an earlier occurrence, or
/// labels followed by an optional pointer to the rest.
#[derive(Debug, Clone, Copy)]
pub enum NameRef<'a> {
    Ptr(Pointer),
    Labels(&'a [&'a [u8]], Option<Pointer>),
}

/// Writes a response into `buf` without ever exceeding `limit` bytes.
pub struct Writer<'b> {
    pub buf: &'b mut Vec<u8>,
    limit: usize,
    counts: [u16; 3],
    section: Section,
    /// A record was left out of the answer (or authority) section.
    pub truncated: bool,
    /// Stop adding to the current section.
    full: bool,
    reserve: usize,
}

impl<'b> Writer<'b> {
    /// Starts a response: the header (counts patched in `finish`) and, when
    /// `question` is given, the question copied from the request.
    /// `reserve` bytes are kept free for the OPT record.
    pub fn new(
        buf: &'b mut Vec<u8>,
        id: u16,
        flags: u16,
        question: Option<&[u8]>,
        limit: usize,
        reserve: usize,
    ) -> Self {
        buf.clear();
        buf.extend_from_slice(&id.to_be_bytes());
        buf.extend_from_slice(&flags.to_be_bytes());
        buf.extend_from_slice(&[0, u8::from(question.is_some()), 0, 0, 0, 0, 0, 0]);
        if let Some(q) = question {
            buf.extend_from_slice(q);
        }
        Self {
            buf,
            limit,
            counts: [0; 3],
            section: Section::Answer,
            truncated: false,
            full: false,
            reserve,
        }
    }

    pub fn section(&mut self, section: Section) {
        self.section = section;
        self.full = false;
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.count(Section::Answer) == 0
    }

    pub fn count(&self, s: Section) -> u16 {
        self.counts[s as usize]
    }

    pub fn write_name(&mut self, name: NameRef<'_>) {
        match name {
            NameRef::Ptr(p) => self.buf.extend_from_slice(&p.wire()),
            NameRef::Labels(labels, rest) => {
                for l in labels {
                    // Labels come from parsed names and checked domains:
                    // never over 63 bytes.
                    self.buf.push(u8::try_from(l.len()).unwrap_or(63).min(63));
                    self.buf.extend_from_slice(&l[..l.len().min(63)]);
                }
                match rest {
                    Some(p) => self.buf.extend_from_slice(&p.wire()),
                    None => self.buf.push(0),
                }
            }
        }
    }

    /// Appends one record whose RDATA `rdata` writes. Returns the offset of
    /// the RDATA, or `None` when the record did not fit (it is then left out
    /// whole, and nothing more is added to this section).
    pub fn record(
        &mut self,
        owner: NameRef<'_>,
        rtype: u16,
        ttl: u32,
        rdata: impl FnOnce(&mut Self),
    ) -> Option<usize> {
        if self.full {
            return None;
        }
        let start = self.buf.len();
        self.write_name(owner);
        self.buf.extend_from_slice(&rtype.to_be_bytes());
        self.buf.extend_from_slice(&CLASS_IN.to_be_bytes());
        self.buf.extend_from_slice(&ttl.to_be_bytes());
        let len_at = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        let rdata_at = self.buf.len();
        rdata(self);
        let rdlen = self.buf.len() - rdata_at;
        let rdlen = match u16::try_from(rdlen) {
            Ok(n) if self.buf.len() + self.reserve <= self.limit => n,
            _ => {
                self.buf.truncate(start);
                self.full = true;
                if self.section != Section::Additional {
                    self.truncated = true;
                }
                return None;
            }
        };
        self.buf[len_at..len_at + 2].copy_from_slice(&rdlen.to_be_bytes());
        self.counts[self.section as usize] += 1;
        Some(rdata_at)
    }

    pub fn a(&mut self, owner: NameRef<'_>, ttl: u32, ip: Ipv4Addr) -> Option<usize> {
        self.record(owner, TYPE_A, ttl, |w| {
            w.buf.extend_from_slice(&ip.octets())
        })
    }

    pub fn aaaa(&mut self, owner: NameRef<'_>, ttl: u32, ip: Ipv6Addr) -> Option<usize> {
        self.record(owner, TYPE_AAAA, ttl, |w| {
            w.buf.extend_from_slice(&ip.octets())
        })
    }

    /// SRV; returns the offset of the target name (for the additional
    /// records to point to). The target is never compressed (RFC 2782).
    pub fn srv(
        &mut self,
        owner: NameRef<'_>,
        ttl: u32,
        priority: u16,
        weight: u16,
        port: u16,
        target: &[&[u8]],
    ) -> Option<usize> {
        self.record(owner, TYPE_SRV, ttl, |w| {
            w.buf.extend_from_slice(&priority.to_be_bytes());
            w.buf.extend_from_slice(&weight.to_be_bytes());
            w.buf.extend_from_slice(&port.to_be_bytes());
            w.write_name(NameRef::Labels(target, None));
        })
        .map(|at| at + 6)
    }

    pub fn name_record(
        &mut self,
        owner: NameRef<'_>,
        rtype: u16,
        ttl: u32,
        target: NameRef<'_>,
    ) -> Option<usize> {
        self.record(owner, rtype, ttl, |w| w.write_name(target))
    }

    #[allow(clippy::too_many_arguments)]
    pub fn soa(
        &mut self,
        owner: NameRef<'_>,
        ttl: u32,
        mname: NameRef<'_>,
        rname: NameRef<'_>,
        serial: u32,
        times: [u32; 4],
    ) -> Option<usize> {
        self.record(owner, TYPE_SOA, ttl, |w| {
            w.write_name(mname);
            w.write_name(rname);
            w.buf.extend_from_slice(&serial.to_be_bytes());
            for t in times {
                w.buf.extend_from_slice(&t.to_be_bytes());
            }
        })
    }

    pub fn txt(&mut self, owner: NameRef<'_>, ttl: u32, text: &[u8]) -> Option<usize> {
        self.record(owner, TYPE_TXT, ttl, |w| {
            for chunk in text.chunks(255) {
                w.buf.push(u8::try_from(chunk.len()).unwrap_or(u8::MAX));
                w.buf.extend_from_slice(chunk);
            }
            if text.is_empty() {
                w.buf.push(0);
            }
        })
    }

    /// Appends the OPT record (in the space reserved for it) and writes the
    /// final counts, the rcode and TC into the header.
    pub fn finish(self, rcode: Rcode, edns_payload: Option<u16>) {
        let mut additional = self.counts[Section::Additional as usize];
        let ext = (rcode as u8) >> 4;
        if let Some(payload) = edns_payload {
            self.buf.push(0);
            self.buf.extend_from_slice(&TYPE_OPT.to_be_bytes());
            self.buf.extend_from_slice(&payload.to_be_bytes());
            self.buf.extend_from_slice(&[ext, 0, 0, 0, 0, 0]);
            additional += 1;
        }
        let mut flags = u16::from_be_bytes([self.buf[2], self.buf[3]]);
        flags = (flags & !0x000F) | (rcode as u16 & 0x0F);
        if self.truncated {
            flags |= 0x0200;
        }
        self.buf[2..4].copy_from_slice(&flags.to_be_bytes());
        self.buf[6..8].copy_from_slice(&self.counts[0].to_be_bytes());
        self.buf[8..10].copy_from_slice(&self.counts[1].to_be_bytes());
        self.buf[10..12].copy_from_slice(&additional.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query as a stub resolver sends it.
    pub fn query(name: &str, qtype: u16, edns: Option<u16>) -> Vec<u8> {
        let mut p = vec![
            0x12,
            0x34,
            0x01,
            0x00,
            0,
            1,
            0,
            0,
            0,
            0,
            0,
            u8::from(edns.is_some()),
        ];
        for label in name
            .trim_end_matches('.')
            .split('.')
            .filter(|l| !l.is_empty())
        {
            p.push(u8::try_from(label.len()).expect("test labels are short"));
            p.extend_from_slice(label.as_bytes());
        }
        p.push(0);
        p.extend_from_slice(&qtype.to_be_bytes());
        p.extend_from_slice(&CLASS_IN.to_be_bytes());
        if let Some(size) = edns {
            p.push(0);
            p.extend_from_slice(&TYPE_OPT.to_be_bytes());
            p.extend_from_slice(&size.to_be_bytes());
            p.extend_from_slice(&[0, 0, 0x80, 0, 0, 0]);
        }
        p
    }

    #[test]
    fn parses_a_query_with_edns() {
        let p = query("Web.Service.Bronze.", TYPE_SRV, Some(4096));
        let q = parse(&p).expect("parses");
        assert_eq!(q.id, 0x1234);
        assert!(q.recursion_desired);
        assert_eq!(q.qtype, TYPE_SRV);
        assert_eq!(q.name.label_count(), 3);
        assert_eq!(q.name.label(0), b"web");
        assert_eq!(q.name.label(2), b"bronze");
        assert_eq!(q.name.label_offset(2), 12);
        assert!(q.name.ends_with(&[b"bronze".to_vec()]));
        assert_eq!(
            q.edns,
            Some(Edns {
                payload: 4096,
                version: 0,
                dnssec_ok: true
            })
        );
    }

    #[test]
    fn rejects_what_it_should() {
        assert_eq!(parse(&[0; 5]).unwrap_err(), ParseError::Drop);
        let mut p = query("a.bronze", TYPE_A, None);
        p[2] |= 0x80; // a response
        assert_eq!(parse(&p).unwrap_err(), ParseError::Drop);
        let mut p = query("a.bronze", TYPE_A, None);
        p[5] = 2; // two questions
        assert!(matches!(
            parse(&p),
            Err(ParseError::Reply {
                rcode: Rcode::FormErr,
                ..
            })
        ));
        let mut p = query("a.bronze", TYPE_A, None);
        p[2] = 0x28; // opcode UPDATE
        assert!(matches!(
            parse(&p),
            Err(ParseError::Reply {
                rcode: Rcode::NotImp,
                ..
            })
        ));
        // A compression pointer in the question.
        let mut p = query("a.bronze", TYPE_A, None);
        p[12] = 0xC0;
        assert!(matches!(
            parse(&p),
            Err(ParseError::Reply {
                rcode: Rcode::FormErr,
                ..
            })
        ));
        // Truncated question.
        let p = query("a.bronze", TYPE_A, None);
        assert!(parse(&p[..p.len() - 1]).is_err());
        // Two OPT records.
        let mut p = query("a.bronze", TYPE_A, Some(1232));
        let opt = p[p.len() - OPT_LEN..].to_vec();
        p.extend_from_slice(&opt);
        p[11] = 2;
        assert!(matches!(
            parse(&p),
            Err(ParseError::Reply {
                rcode: Rcode::FormErr,
                ..
            })
        ));
    }

    #[test]
    fn long_names_are_formerr() {
        let label = "a".repeat(63);
        let name = [label.as_str(); 5].join(".");
        let p = query(&name, TYPE_A, None);
        assert!(matches!(
            parse(&p),
            Err(ParseError::Reply {
                rcode: Rcode::FormErr,
                ..
            })
        ));
        let name = [label.as_str(); 3].join(".");
        assert!(parse(&query(&name, TYPE_A, None)).is_ok());
    }

    #[test]
    fn writer_leaves_out_what_does_not_fit_and_sets_tc() {
        let req = query("web.service.bronze", TYPE_A, None);
        let q = parse(&req).expect("parses");
        let mut buf = Vec::new();
        let mut w = Writer::new(
            &mut buf,
            q.id,
            0x8400,
            Some(&req[HEADER_LEN..q.question_end]),
            512,
            0,
        );
        let mut written = 0;
        for i in 0..100u8 {
            if w.a(
                NameRef::Ptr(Pointer::QUESTION),
                0,
                Ipv4Addr::new(10, 0, 0, i),
            )
            .is_some()
            {
                written += 1;
            }
        }
        assert!(w.truncated);
        w.finish(Rcode::NoError, None);
        assert!(buf.len() <= 512);
        // 12 header + 24 question, 16 bytes per A record with a pointer.
        assert_eq!(written, (512 - 12 - 24) / 16);
        assert_eq!(u16::from_be_bytes([buf[6], buf[7]]), written);
        assert_ne!(buf[2] & 0x02, 0, "TC set");
    }
}
