//! The kernel path: a stack service's virtual address answered by DNAT
//! rules in the nat table instead of the userland forwarder, so a call by
//! name costs what a direct call costs (no accept, connect or splice in
//! the agent).
//!
//! Each round the mesh computes the whole [`Desired`] state: per (virtual
//! IP, target port) its backends (an instance on this node at its
//! container's address on the stack network, skipping `docker-proxy`; an
//! instance elsewhere at its registered address). [`Nat::apply`] writes it
//! in one `iptables-restore --noflush` transaction when it differs from
//! what was last written: this node's chains (named by [`tag`], so agents
//! sharing a kernel keep apart) are declared, which flushes them, and
//! filled again; chains of this node no longer wanted are deleted; the
//! jumps from the built-in chains are added when missing. So every write
//! replaces what an earlier run left, and the order of rounds does not
//! matter. Connections already established keep their backend (conntrack);
//! new ones take the rules of the moment.
//!
//! Chains (nat table): `BRONZE-MESH-<tag>`, jumped to from PREROUTING
//! (calls from the stack bridges) and OUTPUT (calls from the host) for
//! `10.210.0.0/16`, matches each virtual address and jumps to its
//! `BZM-<tag>-<address>` chain, which DNATs to one backend of n
//! (`statistic --mode random`, probability 1/n, 1/(n-1), ... 1);
//! `BZM-<tag>-HAIRPIN`, from POSTROUTING, masquerades a call a task makes
//! to its own service that lands on itself. Filter table:
//! `BRONZE-MESH-<tag>`, from INPUT, rejects with a TCP reset the calls to a
//! virtual address with no passing instance (callers fail at once).
//!
//! [`teardown_text`] removes a node's chains and jumps: at shutdown, and
//! for nodes whose agent is gone (no stack network of theirs left).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::{Command, Stdio};

/// The stack networks' range (`10.210.N.0/24`): the only destinations the
/// jumps from the built-in chains send to this node's chains.
pub const RANGE: &str = "10.210.0.0/16";

/// What the kernel should do for this node's virtual addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// (virtual IP, port) -> backends; none: the calls are refused.
    pub services: BTreeMap<(Ipv4Addr, u16), Vec<SocketAddrV4>>,
    /// Container addresses of this node's backends (hairpin calls).
    pub local: BTreeSet<Ipv4Addr>,
}

/// The node's tag in its chains' names: 8 hex digits of a hash of the
/// node id's first 12 characters (what its networks' names carry).
pub fn tag(node: &str) -> String {
    let short: String = node.chars().take(12).collect();
    format!("{:08x}", super::stable_hash(&short) & 0xffff_ffff)
}

/// The chain the built-in chains jump to, in the nat and filter tables.
pub fn top_chain(tag: &str) -> String {
    format!("BRONZE-MESH-{tag}")
}

fn hairpin_chain(tag: &str) -> String {
    format!("BZM-{tag}-HAIRPIN")
}

fn service_chain(tag: &str, vip: Ipv4Addr, port: u16) -> String {
    let o = vip.octets();
    format!("BZM-{tag}-{:02x}{:02x}{port:04x}", o[2], o[3])
}

/// The node tag a chain of ours carries, if it is one of ours.
fn tag_of(chain: &str) -> Option<&str> {
    let rest = chain
        .strip_prefix("BRONZE-MESH-")
        .or_else(|| chain.strip_prefix("BZM-"))?;
    rest.get(..8)
        .filter(|t| t.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// One table of `iptables-save` output, as far as Bronze's chains go.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Saved {
    /// Every chain of ours there.
    pub chains: BTreeSet<String>,
    /// Rules in other chains jumping to one of ours: (target, the rule as
    /// saved, `-A CHAIN ...`).
    pub jumps: Vec<(String, String)>,
}

impl Saved {
    pub fn parse(text: &str) -> Self {
        let mut out = Self::default();
        for line in text.lines() {
            if let Some(decl) = line.strip_prefix(':') {
                let name = decl.split_whitespace().next().unwrap_or_default();
                if tag_of(name).is_some() {
                    out.chains.insert(name.to_string());
                }
            } else if let Some(rule) = line.strip_prefix("-A ") {
                let mut words = rule.split_whitespace();
                let chain = words.next().unwrap_or_default();
                let target = words.skip_while(|w| *w != "-j").nth(1).unwrap_or_default();
                if tag_of(chain).is_none() && tag_of(target).is_some() {
                    out.jumps.push((target.to_string(), line.to_string()));
                }
            }
        }
        out
    }

    /// Node tags with a chain here.
    pub fn tags(&self) -> BTreeSet<String> {
        self.chains
            .iter()
            .filter_map(|c| tag_of(c).map(str::to_string))
            .collect()
    }

    fn jumps_from(&self, builtin: &str, target: &str) -> bool {
        let prefix = format!("-A {builtin} ");
        self.jumps
            .iter()
            .any(|(t, line)| t == target && line.starts_with(&prefix))
    }
}

/// The `iptables-restore --noflush` input making the node `tag`'s chains
/// `desired`, given what the tables hold now.
pub fn write_text(tag: &str, desired: &Desired, nat: &Saved, filter: &Saved) -> String {
    let top = top_chain(tag);
    let hairpin = hairpin_chain(tag);
    let mut wanted: BTreeSet<String> = [top.clone(), hairpin.clone()].into();
    let mut rules = Vec::new();
    let mut rejects = Vec::new();
    for ((vip, port), backends) in &desired.services {
        let matches = format!("-d {vip}/32 -p tcp -m tcp --dport {port}");
        if backends.is_empty() {
            rejects.push(format!(
                "-A {top} {matches} -j REJECT --reject-with tcp-reset"
            ));
            continue;
        }
        let chain = service_chain(tag, *vip, *port);
        rules.push(format!("-A {top} {matches} -j {chain}"));
        let n = backends.len();
        for (i, b) in backends.iter().enumerate() {
            let left = n - i;
            let pick = if left > 1 {
                format!(
                    "-m statistic --mode random --probability {:.10} ",
                    1.0 / left as f64
                )
            } else {
                String::new()
            };
            rules.push(format!(
                "-A {chain} -p tcp {pick}-j DNAT --to-destination {b}"
            ));
        }
        wanted.insert(chain);
    }
    for ip in &desired.local {
        rules.push(format!("-A {hairpin} -s {ip}/32 -d {ip}/32 -j MASQUERADE"));
    }
    let mut out = String::from("*nat\n");
    let ours = |c: &&String| tag_of(c) == Some(tag);
    for chain in wanted.iter().chain(nat.chains.iter().filter(ours)) {
        out.push_str(&format!(":{chain} - [0:0]\n"));
    }
    for r in rules {
        out.push_str(&r);
        out.push('\n');
    }
    for (builtin, target) in [
        ("PREROUTING", &top),
        ("OUTPUT", &top),
        ("POSTROUTING", &hairpin),
    ] {
        if !nat.jumps_from(builtin, target) {
            out.push_str(&format!("-I {builtin} 1 -d {RANGE} -j {target}\n"));
        }
    }
    for stale in nat
        .chains
        .iter()
        .filter(ours)
        .filter(|c| !wanted.contains(*c))
    {
        out.push_str(&format!("-X {stale}\n"));
    }
    out.push_str("COMMIT\n*filter\n");
    out.push_str(&format!(":{top} - [0:0]\n"));
    for r in rejects {
        out.push_str(&r);
        out.push('\n');
    }
    if !filter.jumps_from("INPUT", &top) {
        out.push_str(&format!("-I INPUT 1 -d {RANGE} -j {top}\n"));
    }
    for stale in filter.chains.iter().filter(ours).filter(|c| **c != top) {
        out.push_str(&format!(":{stale} - [0:0]\n-X {stale}\n"));
    }
    out.push_str("COMMIT\n");
    out
}

/// The `iptables-restore --noflush` input removing every chain of `tags`
/// and the jumps to them; `None` when there is none.
pub fn teardown_text(tags: &BTreeSet<String>, nat: &Saved, filter: &Saved) -> Option<String> {
    let mine = |chain: &str| tag_of(chain).is_some_and(|t| tags.contains(t));
    let mut out = String::new();
    for (table, saved) in [("nat", nat), ("filter", filter)] {
        let chains: Vec<&String> = saved.chains.iter().filter(|c| mine(c)).collect();
        let jumps: Vec<&String> = saved
            .jumps
            .iter()
            .filter(|(t, _)| mine(t))
            .map(|(_, line)| line)
            .collect();
        if chains.is_empty() && jumps.is_empty() {
            continue;
        }
        out.push_str(&format!("*{table}\n"));
        for line in jumps {
            out.push_str(&format!("-D {}\n", &line[3..]));
        }
        for c in &chains {
            out.push_str(&format!(":{c} - [0:0]\n"));
        }
        for c in &chains {
            out.push_str(&format!("-X {c}\n"));
        }
        out.push_str("COMMIT\n");
    }
    (!out.is_empty()).then_some(out)
}

/// Runs `program args` with `input` on stdin; its stdout.
fn run(program: &str, args: &[&str], input: Option<&str>) -> Result<String, String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {program}: {e}"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| format!("writing to {program}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("running {program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The nat and filter tables as far as Bronze's chains go.
fn saved() -> Result<(Saved, Saved), String> {
    let nat = run("iptables-save", &["-t", "nat"], None)?;
    let filter = run("iptables-save", &["-t", "filter"], None)?;
    Ok((Saved::parse(&nat), Saved::parse(&filter)))
}

fn restore(text: &str) -> Result<(), String> {
    run("iptables-restore", &["--wait=5", "--noflush"], Some(text)).map(|_| ())
}

/// Runs blocking `f` off the runtime's threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("iptables task: {e}"))?
}

/// This node's rules, as last written.
pub struct Nat {
    tag: String,
    last: Option<Desired>,
}

impl Nat {
    /// The kernel path for node `node`, if this host can take it:
    /// `iptables-save`/`iptables-restore` run, and bridged traffic passes
    /// iptables (`br_netfilter`), without which a backend's answer to a
    /// caller on its own bridge would skip the reverse translation.
    pub async fn start(node: &str) -> Result<Self, String> {
        let bridged = "/proc/sys/net/bridge/bridge-nf-call-iptables";
        match std::fs::read_to_string(bridged) {
            Ok(v) if v.trim() == "1" => {}
            Ok(v) => return Err(format!("{bridged} is {}, expected 1", v.trim())),
            Err(e) => return Err(format!("reading {bridged}: {e} (br_netfilter not loaded?)")),
        }
        blocking(saved).await?;
        Ok(Self {
            tag: tag(node),
            last: None,
        })
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Makes the rules `desired` unless they were last written so; no
    /// virtual address at all: no chain of this node is left.
    pub async fn apply(&mut self, desired: &Desired) -> Result<(), String> {
        if self.last.as_ref() == Some(desired) {
            return Ok(());
        }
        if desired.services.is_empty() {
            remove_tags([self.tag.clone()].into()).await?;
        } else {
            let tag = self.tag.clone();
            let d = desired.clone();
            blocking(move || {
                let (nat, filter) = saved()?;
                restore(&write_text(&tag, &d, &nat, &filter))
            })
            .await?;
        }
        self.last = Some(desired.clone());
        Ok(())
    }

    /// Makes the next [`Nat::apply`] write even an unchanged state, when
    /// rules were written and `present` (node tags with chains now) says
    /// they are gone (a firewall reload flushed them).
    pub fn check(&mut self, present: &BTreeSet<String>) {
        let written = self.last.as_ref().is_some_and(|d| !d.services.is_empty());
        if written && !present.contains(&self.tag) {
            tracing::warn!(chain = %top_chain(&self.tag), "the mesh rules are gone; writing them again");
            self.last = None;
        }
    }

    /// Removes this node's rules (at shutdown).
    pub async fn teardown(&mut self) -> Result<(), String> {
        self.last = None;
        remove_tags([self.tag.clone()].into()).await
    }
}

/// Removes every chain of `tags` and the jumps to them.
pub async fn remove_tags(tags: BTreeSet<String>) -> Result<(), String> {
    blocking(move || {
        let (nat, filter) = saved()?;
        match teardown_text(&tags, &nat, &filter) {
            Some(text) => restore(&text),
            None => Ok(()),
        }
    })
    .await
}

/// Node tags with chains in the nat or filter table.
pub async fn tags_present() -> Result<BTreeSet<String>, String> {
    blocking(|| {
        let (nat, filter) = saved()?;
        let mut tags = nat.tags();
        tags.extend(filter.tags());
        Ok(tags)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVED_NAT: &str = "# Generated by iptables-save
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
:BRONZE-MESH-0000beef - [0:0]
:BZM-0000beef-0a800050 - [0:0]
:BZM-0000beef-HAIRPIN - [0:0]
:BRONZE-MESH-12345678 - [0:0]
-A PREROUTING -d 10.210.0.0/16 -j BRONZE-MESH-0000beef
-A PREROUTING -d 10.210.0.0/16 -j BRONZE-MESH-12345678
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT -d 10.210.0.0/16 -j BRONZE-MESH-0000beef
-A BRONZE-MESH-0000beef -d 10.210.10.128/32 -p tcp -m tcp --dport 80 -j BZM-0000beef-0a800050
COMMIT
";

    #[test]
    fn names_are_short_stable_and_parsed_back() {
        let t = tag("abcdef0123456789");
        assert_eq!(t, tag("abcdef012345-other-suffix"), "12 characters count");
        assert_eq!(t.len(), 8);
        let vip = Ipv4Addr::new(10, 210, 7, 200);
        let chain = service_chain(&t, vip, 8080);
        assert!(chain.len() <= 28, "iptables' limit: {chain}");
        assert_eq!(tag_of(&chain), Some(t.as_str()));
        assert_eq!(tag_of(&top_chain(&t)), Some(t.as_str()));
        assert_eq!(tag_of("DOCKER"), None);
        assert_eq!(tag_of("BZM-xyz"), None);
    }

    #[test]
    fn the_whole_ruleset_replaces_what_an_earlier_run_left() {
        let nat = Saved::parse(SAVED_NAT);
        assert_eq!(nat.tags(), ["0000beef".into(), "12345678".into()].into());
        let vip = Ipv4Addr::new(10, 210, 10, 130);
        let down = Ipv4Addr::new(10, 210, 10, 131);
        let a = SocketAddrV4::new(Ipv4Addr::new(10, 210, 10, 2), 8080);
        let b = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 7), 31000);
        let c = SocketAddrV4::new(Ipv4Addr::new(10, 210, 10, 3), 8080);
        let desired = Desired {
            services: [((vip, 8080), vec![a, b, c]), ((down, 9000), vec![])].into(),
            local: [*a.ip(), *c.ip()].into(),
        };
        let text = write_text("0000beef", &desired, &nat, &Saved::default());
        let lines: Vec<&str> = text.lines().collect();
        let svc = service_chain("0000beef", vip, 8080);
        for want in [
            "*nat",
            ":BRONZE-MESH-0000beef - [0:0]",
            ":BZM-0000beef-HAIRPIN - [0:0]",
            // The earlier run's chain is flushed, then deleted.
            ":BZM-0000beef-0a800050 - [0:0]",
            "-X BZM-0000beef-0a800050",
            &format!(":{svc} - [0:0]"),
            &format!(
                "-A BRONZE-MESH-0000beef -d 10.210.10.130/32 -p tcp -m tcp --dport 8080 -j {svc}"
            ),
            &format!(
                "-A {svc} -p tcp -m statistic --mode random --probability 0.3333333333 -j DNAT --to-destination 10.210.10.2:8080"
            ),
            &format!(
                "-A {svc} -p tcp -m statistic --mode random --probability 0.5000000000 -j DNAT --to-destination 192.0.2.7:31000"
            ),
            &format!("-A {svc} -p tcp -j DNAT --to-destination 10.210.10.3:8080"),
            "-A BZM-0000beef-HAIRPIN -s 10.210.10.2/32 -d 10.210.10.2/32 -j MASQUERADE",
            // Jumps already there are not added twice; missing ones are.
            "-I POSTROUTING 1 -d 10.210.0.0/16 -j BZM-0000beef-HAIRPIN",
            "*filter",
            "-A BRONZE-MESH-0000beef -d 10.210.10.131/32 -p tcp -m tcp --dport 9000 -j REJECT --reject-with tcp-reset",
            "-I INPUT 1 -d 10.210.0.0/16 -j BRONZE-MESH-0000beef",
        ] {
            assert!(lines.contains(&want), "{want:?} missing from:\n{text}");
        }
        assert!(!text.contains("-I PREROUTING"), "{text}");
        assert!(!text.contains("-I OUTPUT"), "{text}");
        assert!(
            !text.contains("12345678"),
            "another node's chains stay: {text}"
        );
        // Chains are declared (flushed) before rules use them, deleted last.
        let pos = |s: &str| text.find(s).expect(s);
        assert!(pos(&format!(":{svc}")) < pos(&format!("-A {svc}")));
        assert!(pos("-A BZM-0000beef-HAIRPIN") < pos("-X BZM-0000beef-0a800050"));
        assert_eq!(text.matches("COMMIT").count(), 2);
    }

    #[test]
    fn rules_removed_by_someone_else_are_written_again() {
        let written = Desired {
            services: [((Ipv4Addr::new(10, 210, 1, 130), 80), vec![])].into(),
            local: BTreeSet::new(),
        };
        let mut n = Nat {
            tag: "0000beef".into(),
            last: Some(written.clone()),
        };
        n.check(&["0000beef".into()].into());
        assert_eq!(n.last.as_ref(), Some(&written), "still there: kept");
        n.check(&["12345678".into()].into());
        assert_eq!(n.last, None, "gone: the next apply writes");
        // Nothing written (no virtual address): nothing to miss.
        n.last = Some(Desired::default());
        n.check(&BTreeSet::new());
        assert_eq!(n.last, Some(Desired::default()));
    }

    #[test]
    fn a_teardown_removes_the_jumps_then_the_chains_of_its_nodes_only() {
        let nat = Saved::parse(SAVED_NAT);
        let text = teardown_text(&["0000beef".into()].into(), &nat, &Saved::default())
            .expect("something to remove");
        assert_eq!(
            text,
            "*nat
-D PREROUTING -d 10.210.0.0/16 -j BRONZE-MESH-0000beef
-D OUTPUT -d 10.210.0.0/16 -j BRONZE-MESH-0000beef
:BRONZE-MESH-0000beef - [0:0]
:BZM-0000beef-0a800050 - [0:0]
:BZM-0000beef-HAIRPIN - [0:0]
-X BRONZE-MESH-0000beef
-X BZM-0000beef-0a800050
-X BZM-0000beef-HAIRPIN
COMMIT
"
        );
        assert_eq!(
            teardown_text(&["99999999".into()].into(), &nat, &Saved::default()),
            None
        );
    }
}
