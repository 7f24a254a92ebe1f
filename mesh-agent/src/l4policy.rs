//! The L4 subset of Istio's AuthorizationPolicy for one destination pod, and its
//! compiler into the kernel's policy table (pure: no I/O, table-tested here).
//!
//! # Semantics (Istio's)
//! Within a rule every field must match (AND); within a list any element (OR).
//! `rules: [{}]` (one empty rule) matches everything; a policy with no rules matches
//! nothing. A `Source` with no fields matches any source. The caller passes only the
//! policies that select the pod and only their L4-expressible rules.
//!
//! # Two views: plaintext on application ports, identity on HBONE
//! Traffic reaching the pod's interface on a port other than [`HBONE_PORT`] is
//! plaintext (meshed traffic reaches the application over the pod's loopback), and
//! plaintext carries no identity: there a source with identity conditions (`peers`)
//! never matches and its not-forms (`not_peers`) always do, exactly as Istio judges
//! plaintext. On [`HBONE_PORT`] the peer is authenticated later by the agent; the
//! kernel can only guess it from the address, so there `peers` and `not_peers` are the
//! addresses of the workloads the caller found holding (or excluded by) the identities.
//! [`View`] names the two; a packet's port chooses it.
//!
//! # Precedence, as the kernel applies it
//! 1. any DENY policy matches -> drop (`POLICY_DENY`);
//! 2. else any ALLOW policy matches -> allow;
//! 3. else, if at least one ALLOW policy selects the pod -> drop
//!    (`POLICY_NO_ALLOW_MATCH`); with no ALLOW policy -> allow.
//!
//! No policy at all: the pod has no kernel entry and everything passes.
//!
//! # How it is compiled
//! Every prefix any rule names (ip_blocks, not_ip_blocks, peers as /32 or /128)
//! plus `::/0` forms a set in which prefixes are nested or disjoint. For an address
//! `a`, its longest matching prefix `L(a)` in that set determines whether `a` is in
//! each named prefix (exactly the ancestors of `L(a)`), so the whole decision for `a`
//! is a function of `L(a)` and the port: one LPM entry per (port class, prefix) holds
//! the final verdict, steps 1-2 folded in. Port classes: each port any rule names,
//! and "any other port" (port 0 in the key). The kernel looks up the exact port first
//! and falls back to port 0; an exact port's table is emitted in full (including its
//! `::/0` entry), so the fallback only serves ports no rule names. Entries whose
//! verdict equals their parent prefix's are left out, and so is an exact port's
//! table when it says what the "other" table says.
//!
//! # HBONE
//! Mesh traffic arrives on [`HBONE_PORT`] with the real destination port inside the
//! CONNECT request, which the kernel cannot see. So port 15008 gets its own table,
//! computed in the identity view: a source passes there when any port class allows
//! it, and is dropped only when it is dropped on every port (the agent then judges the
//! real port). The two views are computed apart only when some source has identity
//! conditions; otherwise they agree. A rule naming 15008 itself has no meaning (the
//! agent refuses CONNECT to its own port).
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use mesh_common::verdict;

/// The HBONE port: its table is the union of what every port allows.
pub const HBONE_PORT: u16 = 15008;

/// ALLOW or DENY (AUDIT and CUSTOM are not L4 and never reach here).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
}

/// One AuthorizationPolicy selecting the pod, L4 rules only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct L4Policy {
    /// `namespace/name`, for logs and `meshctl`.
    pub name: String,
    pub action: Action,
    pub rules: Vec<Rule>,
}

/// A rule: any of `from` AND any of `to`; an empty list matches anything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    pub from: Vec<Source>,
    pub to: Vec<Operation>,
}

/// A source: every non-empty field must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Source {
    pub ip_blocks: Vec<Prefix>,
    pub not_ip_blocks: Vec<Prefix>,
    /// Identity conditions (`principals`, `namespaces`); `None` when there are none.
    /// Plaintext: never matches. HBONE: matches from these addresses, those of the
    /// workloads holding a matching identity (empty: nobody).
    pub peers: Option<Vec<IpAddr>>,
    /// Identity not-forms (`notPrincipals`, `notNamespaces`). Plaintext: always
    /// matches. HBONE: does not match from these addresses, those of the workloads
    /// the not-forms exclude.
    pub not_peers: Vec<IpAddr>,
    /// Plaintext never matches (an ALLOW's not-forms admit no caller without
    /// identity); HBONE: no condition.
    pub needs_identity: bool,
}

impl Source {
    fn has_identity(&self) -> bool {
        self.peers.is_some() || !self.not_peers.is_empty() || self.needs_identity
    }
}

/// How a source's identity conditions are judged (see the module's documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// Application ports: no identity, so `peers` never match and `not_peers` always do.
    Plaintext,
    /// [`HBONE_PORT`]: `peers` and `not_peers` by the workloads' addresses.
    Identity,
}

/// An operation: every non-empty field must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Operation {
    pub ports: Vec<u16>,
    pub not_ports: Vec<u16>,
}

/// An address prefix in the kernel's one address space: IPv4 as IPv4-mapped IPv6
/// (`10.0.0.0/8` is `::ffff:10.0.0.0/104`). `bits` is the address as a big-endian
/// integer with host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    pub bits: u128,
    pub len: u8,
}

impl Prefix {
    pub const ALL: Prefix = Prefix { bits: 0, len: 0 };

    /// `ip/len` in the address's own family (`len` up to 32 for IPv4, 128 for IPv6).
    pub fn new(ip: IpAddr, len: u8) -> Result<Prefix, CompileError> {
        let (v6, len) = match ip {
            IpAddr::V4(v4) if len <= 32 => (v4.to_ipv6_mapped(), len + 96),
            IpAddr::V6(v6) if len <= 128 => (v6, len),
            _ => return Err(CompileError::BadPrefix(format!("{ip}/{len}"))),
        };
        Ok(Prefix { bits: u128::from(v6) & mask(len), len })
    }

    /// A single address (/32 or /128).
    pub fn host(ip: IpAddr) -> Prefix {
        let len = if ip.is_ipv4() { 32 } else { 128 };
        Prefix::new(ip, len).expect("full-length prefix is valid")
    }

    /// `"10.0.0.0/8"`, `"fd00::/64"` or a bare address, as Istio's ipBlocks accept.
    pub fn parse(s: &str) -> Result<Prefix, CompileError> {
        let bad = || CompileError::BadPrefix(s.to_string());
        match s.split_once('/') {
            Some((ip, len)) => Prefix::new(ip.parse().map_err(|_| bad())?, len.parse().map_err(|_| bad())?),
            None => Ok(Prefix::host(s.parse().map_err(|_| bad())?)),
        }
    }

    pub fn contains(&self, addr: u128) -> bool {
        addr & mask(self.len) == self.bits
    }

    /// The address part as the kernel's 16 bytes.
    pub fn octets(&self) -> [u8; 16] {
        self.bits.to_be_bytes()
    }
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v6 = std::net::Ipv6Addr::from(self.bits);
        match v6.to_ipv4_mapped() {
            Some(v4) if self.len >= 96 => write!(f, "{v4}/{}", self.len - 96),
            _ => write!(f, "{v6}/{}", self.len),
        }
    }
}

fn mask(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - len as u32)
    }
}

/// The kernel form of an address, as a big-endian integer.
pub fn addr_bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompileError {
    #[error("invalid ipBlock {0:?}: expected an address or address/length")]
    BadPrefix(String),
    #[error("policy {policy}: port 0 is not a port a connection can use")]
    PortZero { policy: String },
}

/// One entry of the kernel table: for destination `port` (0: any port no rule
/// names) and source `prefix`, the final verdict and the deciding policy's index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Entry {
    pub port: u16,
    pub prefix: Prefix,
    pub verdict: u32,
    /// Index into the input list, `u32::MAX` when no policy matched.
    pub policy: u32,
}

/// What the kernel needs for one pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    /// An ALLOW policy selects the pod: unmatched traffic is dropped.
    pub has_allow: bool,
    /// Sorted by (port, prefix).
    pub entries: Vec<Entry>,
}

/// The decision for one packet, straight from Istio's semantics (the reference the
/// compiled table is tested against).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// A DENY policy (index) matched.
    Deny(u32),
    /// ALLOW policies select the pod and none matched.
    NoAllowMatch,
}

/// Evaluates `policies` for one packet directly (no table): the reference. Other
/// ports than [`HBONE_PORT`] in the plaintext view; on [`HBONE_PORT`], in the identity
/// view, allowed when allowed on any port, else as on a port no rule names.
pub fn evaluate(policies: &[L4Policy], src: IpAddr, port: u16) -> Decision {
    if port != HBONE_PORT {
        return evaluate_class(policies, View::Plaintext, src, Some(port));
    }
    let named: BTreeSet<u16> = policies
        .iter()
        .flat_map(|p| &p.rules)
        .flat_map(|r| &r.to)
        .flat_map(|op| op.ports.iter().chain(&op.not_ports).copied())
        .filter(|p| *p != HBONE_PORT)
        .collect();
    let mut classes = std::iter::once(None).chain(named.into_iter().map(Some));
    if classes.any(|c| evaluate_class(policies, View::Identity, src, c) == Decision::Allow) {
        Decision::Allow
    } else {
        evaluate_class(policies, View::Identity, src, None)
    }
}

/// The reference for one port class (`None`: a port no rule names).
fn evaluate_class(policies: &[L4Policy], view: View, src: IpAddr, port: Option<u16>) -> Decision {
    let src = addr_bits(src);
    let matches = |(i, j): RuleId| rule_matches(&policies[i].rules[j], view, src, port);
    match judge(policies, (0..policies.len()).flat_map(|i| rule_ids(policies, i)), &matches) {
        (verdict::DENY, i) => Decision::Deny(i),
        (verdict::ALLOW, _) => Decision::Allow,
        _ if policies.iter().any(|p| p.action == Action::Allow) => Decision::NoAllowMatch,
        _ => Decision::Allow,
    }
}

/// What the kernel would decide with `compiled`: exact port, then port 0, longest prefix.
pub fn lookup(compiled: &Compiled, src: IpAddr, port: u16) -> Option<Decision> {
    let src = addr_bits(src);
    let best = |port: u16| {
        compiled.entries.iter().filter(|e| e.port == port && e.prefix.contains(src)).max_by_key(|e| e.prefix.len)
    };
    let e = (if port != 0 { best(port) } else { None }).or_else(|| best(0))?;
    Some(match e.verdict {
        verdict::DENY => Decision::Deny(e.policy),
        verdict::ALLOW => Decision::Allow,
        _ if compiled.has_allow => Decision::NoAllowMatch,
        _ => Decision::Allow,
    })
}

type RuleId = (usize, usize);
/// One computed table cell: prefix, its parent among the named prefixes, (verdict, policy).
type Cell = (Prefix, Option<Prefix>, (u32, u32));

fn rule_ids(policies: &[L4Policy], i: usize) -> impl Iterator<Item = RuleId> + '_ {
    (0..policies[i].rules.len()).map(move |j| (i, j))
}

/// (verdict, policy index) among the candidate rules, given which rules match:
/// DENY first, then ALLOW, each the first in input order.
fn judge(policies: &[L4Policy], candidates: impl Iterator<Item = RuleId>, matches: &dyn Fn(RuleId) -> bool) -> (u32, u32) {
    let mut allow = None;
    let mut deny = None;
    for (i, j) in candidates {
        let best = match policies[i].action {
            Action::Deny => &mut deny,
            Action::Allow => &mut allow,
        };
        if best.is_some_and(|b| b <= i) || !matches((i, j)) {
            continue;
        }
        *best = Some(i);
    }
    match (deny, allow) {
        (Some(i), _) => (verdict::DENY, i as u32),
        (None, Some(i)) => (verdict::ALLOW, i as u32),
        (None, None) => (verdict::NO_MATCH, u32::MAX),
    }
}

/// Whether an operation list matches `port` (`None`: a port no rule names).
fn to_matches(to: &[Operation], port: Option<u16>) -> bool {
    to.is_empty()
        || to.iter().any(|op| {
            let named = |list: &Vec<u16>| port.is_some_and(|p| list.contains(&p));
            (op.ports.is_empty() || named(&op.ports)) && (op.not_ports.is_empty() || !named(&op.not_ports))
        })
}

/// The reference: a rule against one address, scanning the lists.
fn rule_matches(rule: &Rule, view: View, src: u128, port: Option<u16>) -> bool {
    let inside = |p: &Prefix| p.contains(src);
    let is_src = |ip: &IpAddr| addr_bits(*ip) == src;
    let identity = |s: &Source| match view {
        View::Plaintext => s.peers.is_none() && !s.needs_identity,
        View::Identity => s.peers.as_ref().is_none_or(|ps| ps.iter().any(is_src)) && !s.not_peers.iter().any(is_src),
    };
    let source = |s: &Source| {
        (s.ip_blocks.is_empty() || s.ip_blocks.iter().any(inside))
            && (s.not_ip_blocks.is_empty() || !s.not_ip_blocks.iter().any(inside))
            && identity(s)
    };
    (rule.from.is_empty() || rule.from.iter().any(source)) && to_matches(&rule.to, port)
}

/// A source's lists as sets, for the compiler (lists of 100k prefixes are common).
struct SourceSets {
    ip_blocks: Option<HashSet<Prefix>>,
    not_ip_blocks: Option<HashSet<Prefix>>,
    peers: Option<HashSet<Prefix>>,
    not_peers: Option<HashSet<Prefix>>,
    needs_identity: bool,
}

fn hosts(ips: &[IpAddr]) -> HashSet<Prefix> {
    ips.iter().map(|ip| Prefix::host(*ip)).collect()
}

impl SourceSets {
    fn new(s: &Source) -> SourceSets {
        let set = |v: &Vec<Prefix>| (!v.is_empty()).then(|| v.iter().copied().collect());
        SourceSets {
            ip_blocks: set(&s.ip_blocks),
            not_ip_blocks: set(&s.not_ip_blocks),
            peers: s.peers.as_deref().map(hosts),
            not_peers: (!s.not_peers.is_empty()).then(|| hosts(&s.not_peers)),
            needs_identity: s.needs_identity,
        }
    }

    /// `held`: every named prefix that holds the address.
    fn matches(&self, view: View, held: &[Prefix]) -> bool {
        let any = |set: &HashSet<Prefix>| held.iter().any(|q| set.contains(q));
        let identity = match view {
            View::Plaintext => self.peers.is_none() && !self.needs_identity,
            View::Identity => self.peers.as_ref().is_none_or(any) && self.not_peers.as_ref().is_none_or(|s| !any(s)),
        };
        identity && self.ip_blocks.as_ref().is_none_or(any) && self.not_ip_blocks.as_ref().is_none_or(|s| !any(s))
    }
}

/// Prefixes one of which must hold the source for the rule to match, or `None` when
/// the rule can match without any (it is then a candidate everywhere).
fn anchors(rule: &Rule) -> Option<Vec<Prefix>> {
    if rule.from.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for s in &rule.from {
        if !s.ip_blocks.is_empty() {
            out.extend(s.ip_blocks.iter().copied());
        } else if let Some(ps) = &s.peers {
            // Plaintext never matches such a source: its anchors only over-approximate.
            out.extend(ps.iter().map(|ip| Prefix::host(*ip)));
        } else {
            return None;
        }
    }
    Some(out)
}

/// Compiles the policies that select one pod into its kernel table. An empty list
/// compiles to an empty table without `has_allow`: the caller removes the pod's
/// kernel entry instead (no policy, everything passes).
pub fn compile(policies: &[L4Policy]) -> Result<Compiled, CompileError> {
    if policies.is_empty() {
        return Ok(Compiled::default());
    }
    let mut prefixes: HashSet<Prefix> = HashSet::from([Prefix::ALL]);
    let mut ports: BTreeSet<u16> = BTreeSet::new();
    for p in policies {
        for r in &p.rules {
            for s in &r.from {
                prefixes.extend(s.ip_blocks.iter().chain(&s.not_ip_blocks).copied());
                prefixes.extend(s.peers.iter().flatten().chain(&s.not_peers).map(|ip| Prefix::host(*ip)));
            }
            for op in &r.to {
                for &port in op.ports.iter().chain(&op.not_ports) {
                    if port == 0 {
                        return Err(CompileError::PortZero { policy: p.name.clone() });
                    }
                    if port != HBONE_PORT {
                        ports.insert(port);
                    }
                }
            }
        }
    }
    let mut floating: Vec<RuleId> = Vec::new();
    let mut by_anchor: HashMap<Prefix, Vec<RuleId>> = HashMap::new();
    for i in 0..policies.len() {
        for id in rule_ids(policies, i) {
            match anchors(&policies[id.0].rules[id.1]) {
                None => floating.push(id),
                Some(list) => {
                    for a in list {
                        by_anchor.entry(a).or_default().push(id);
                    }
                }
            }
        }
    }
    let sets: Vec<Vec<Vec<SourceSets>>> = policies
        .iter()
        .map(|p| p.rules.iter().map(|r| r.from.iter().map(SourceSets::new).collect()).collect())
        .collect();
    let lengths: BTreeSet<u8> = prefixes.iter().map(|p| p.len).collect();
    let mut classes: Vec<Option<u16>> = std::iter::once(None).chain(ports.iter().map(|p| Some(*p))).collect();
    // Without identity conditions both views judge alike: compute one.
    let identity = policies.iter().flat_map(|p| &p.rules).flat_map(|r| &r.from).any(Source::has_identity);
    let views: &[View] = if identity { &[View::Plaintext, View::Identity] } else { &[View::Plaintext] };
    // Per view, per class: (prefix, parent, verdict), pruned below.
    let mut tables: Vec<Vec<Vec<Cell>>> = vec![vec![Vec::new(); classes.len()]; views.len()];
    let mut sorted: Vec<Prefix> = prefixes.iter().copied().collect();
    sorted.sort();
    for &n in &sorted {
        // The named prefixes that hold every address whose longest match is `n`.
        let ancestors: Vec<Prefix> = lengths
            .iter()
            .take_while(|&&l| l <= n.len)
            .map(|&l| Prefix { bits: n.bits & mask(l), len: l })
            .filter(|q| prefixes.contains(q))
            .collect();
        let parent = ancestors.iter().rev().find(|q| q.len < n.len).copied();
        let mut cands: Vec<RuleId> = floating.clone();
        for q in &ancestors {
            cands.extend(by_anchor.get(q).into_iter().flatten());
        }
        cands.sort_unstable();
        cands.dedup();
        for (v, view) in views.iter().enumerate() {
            let from: HashMap<RuleId, bool> = cands
                .iter()
                .map(|&(i, j)| {
                    let f = &sets[i][j];
                    ((i, j), f.is_empty() || f.iter().any(|s| s.matches(*view, &ancestors)))
                })
                .collect();
            for (c, class) in classes.iter().enumerate() {
                let matches = |(i, j): RuleId| from[&(i, j)] && to_matches(&policies[i].rules[j].to, *class);
                tables[v][c].push((n, parent, judge(policies, cands.iter().copied(), &matches)));
            }
        }
    }
    let has_allow = policies.iter().any(|p| p.action == Action::Allow);
    // Application ports from the plaintext view, 15008 from the identity view.
    let hbone = hbone_table(tables.last().expect("one view at least"), has_allow);
    let mut tables = tables.swap_remove(0);
    tables.push(hbone);
    classes.push(Some(HBONE_PORT));
    let mut pruned: Vec<Vec<Entry>> = Vec::with_capacity(classes.len());
    for (c, class) in classes.iter().enumerate() {
        let by_prefix: HashMap<Prefix, (u32, u32)> = tables[c].iter().map(|(p, _, v)| (*p, *v)).collect();
        let port = class.unwrap_or(0);
        let kept = tables[c]
            .iter()
            .filter(|(_, parent, v)| parent.is_none_or(|q| by_prefix[&q] != *v))
            .map(|(prefix, _, (verdict, policy))| Entry { port, prefix: *prefix, verdict: *verdict, policy: *policy })
            .collect();
        pruned.push(kept);
    }
    let same_as_other = |t: &Vec<Entry>| {
        t.len() == pruned[0].len()
            && t.iter().zip(&pruned[0]).all(|(a, b)| (a.prefix, a.verdict, a.policy) == (b.prefix, b.verdict, b.policy))
    };
    let mut entries: Vec<Entry> = pruned[0].clone();
    for t in &pruned[1..] {
        if !same_as_other(t) {
            entries.extend(t.iter().copied());
        }
    }
    entries.sort();
    Ok(Compiled { has_allow, entries })
}

/// The HBONE port's cells: per prefix, the first class's verdict that lets the source
/// through (ALLOW, or no match without ALLOW policies), else the "other" class's.
fn hbone_table(tables: &[Vec<Cell>], has_allow: bool) -> Vec<Cell> {
    let passes = |v: &(u32, u32)| v.0 == verdict::ALLOW || (!has_allow && v.0 == verdict::NO_MATCH);
    (0..tables[0].len())
        .map(|k| {
            let (prefix, parent, other) = tables[0][k];
            let v = tables.iter().map(|t| t[k].2).find(passes).unwrap_or(other);
            (prefix, parent, v)
        })
        .collect()
}

#[cfg(test)]
mod tests;
