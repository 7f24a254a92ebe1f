//! Per agent and type: what was sent, what the agent answered (ACK or NACK with its
//! reason), and the registry of connected agents that `/debug/syncz` shows.
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

/// Pushes kept waiting for an answer; older ones are forgotten (a client that never
/// ACKs costs bounded memory).
const MAX_PENDING: usize = 64;
/// NACKed resources remembered per type.
const MAX_NACKS: usize = 100;

/// Why a push was sent (the `reason` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reason {
    /// The first answer to a subscription with nothing held.
    Initial,
    /// The first answer to a subscription that names what the agent holds.
    Resume,
    /// The snapshot changed.
    Change,
    /// The agent looked something up by name.
    OnDemand,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Initial => "initial",
            Reason::Resume => "resume",
            Reason::Change => "change",
            Reason::OnDemand => "on_demand",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Nack {
    pub nonce: u64,
    pub reason: String,
}

#[derive(Debug)]
struct Pending {
    nonce: u64,
    names: Vec<String>,
    /// When the change it carries was seen (snapshot published).
    since: Instant,
    reason: Reason,
}

/// What an agent's answer meant.
#[derive(Debug, PartialEq)]
pub enum Answer {
    /// The push was applied; for a change, how long since the snapshot was published.
    Acked { latency: Option<Duration> },
    /// Rejected: the resources the agent names in its reason (all of the push's if it
    /// names none), kept by the agent at their previous version.
    Nacked { names: Vec<String>, reason: String },
    /// A nonce we did not send or no longer remember.
    Unknown,
}

/// One type of one agent.
#[derive(Debug, Default, Serialize)]
pub struct TypeSync {
    /// Resources the agent holds (as far as we sent).
    pub held: usize,
    pub last_sent_nonce: Option<u64>,
    pub last_acked_nonce: Option<u64>,
    /// Snapshot generation `held` matches.
    pub generation: u64,
    /// Resource name -> the agent's reason, until a later push of it is ACKed.
    pub nacks: BTreeMap<String, Nack>,
    #[serde(skip)]
    pending: VecDeque<Pending>,
}

impl TypeSync {
    pub fn sent(&mut self, nonce: u64, names: Vec<String>, since: Instant, reason: Reason) {
        self.last_sent_nonce = Some(nonce);
        if self.pending.len() == MAX_PENDING {
            self.pending.pop_front();
        }
        self.pending.push_back(Pending { nonce, names, since, reason });
    }

    /// The agent answered `nonce`, with `error` if it rejected something.
    pub fn answered(&mut self, nonce: u64, error: Option<&str>, now: Instant) -> Answer {
        let Some(at) = self.pending.iter().position(|p| p.nonce == nonce) else { return Answer::Unknown };
        // Answers come in order: anything older was answered or superseded.
        let p = self.pending.drain(..=at).next_back().expect("position is in range");
        match error {
            None => {
                self.last_acked_nonce = Some(nonce);
                for n in &p.names {
                    self.nacks.remove(n);
                }
                let latency = (p.reason == Reason::Change).then(|| now.saturating_duration_since(p.since));
                Answer::Acked { latency }
            }
            Some(reason) => {
                let blamed = blamed(reason);
                let named: Vec<String> = p.names.iter().filter(|n| blamed.contains(n.as_str())).cloned().collect();
                let names = if named.is_empty() { p.names } else { named };
                for n in &names {
                    if self.nacks.len() >= MAX_NACKS && !self.nacks.contains_key(n) {
                        break;
                    }
                    self.nacks.insert(n.clone(), Nack { nonce, reason: reason.to_string() });
                }
                Answer::Nacked { names, reason: reason.to_string() }
            }
        }
    }

    /// In sync: everything sent was ACKed, nothing is rejected, and `held` matches the
    /// snapshot of `generation`.
    pub fn in_sync(&self, generation: u64) -> bool {
        self.last_sent_nonce == self.last_acked_nonce && self.nacks.is_empty() && self.generation == generation
    }
}

/// The names `reason` may blame: the agent's errors read `<name>: <why>`, joined by
/// `; `, and a name may hold a colon, so each part's every prefix ending before one.
/// Read once per NACK, not once per resource of the push (20,000 in a first answer).
fn blamed(reason: &str) -> HashSet<&str> {
    reason.split("; ").flat_map(|part| part.match_indices(':').map(move |(i, _)| &part[..i])).collect()
}

/// One connected agent.
#[derive(Debug, Serialize)]
pub struct AgentSync {
    pub node: String,
    pub peer: String,
    /// Seconds since the Unix epoch.
    pub connected_since: u64,
    pub types: BTreeMap<String, TypeSync>,
}

/// The connected agents, by connection id.
#[derive(Default)]
pub struct Registry {
    next: AtomicU64,
    agents: Mutex<BTreeMap<u64, Arc<Mutex<AgentSync>>>>,
}

impl Registry {
    /// Adds an agent; it stays until the returned guard is dropped.
    pub fn connect(self: &Arc<Self>, node: &str, peer: &str) -> Connected {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let since = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let agent = Arc::new(Mutex::new(AgentSync {
            node: node.to_string(),
            peer: peer.to_string(),
            connected_since: since,
            types: BTreeMap::new(),
        }));
        self.agents.lock().unwrap().insert(id, agent.clone());
        Connected { registry: self.clone(), id, agent }
    }

    pub fn len(&self) -> usize {
        self.agents.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `/debug/syncz` document; `generation` is the current snapshot's.
    pub fn syncz(&self, generation: u64) -> serde_json::Value {
        let agents: Vec<Arc<Mutex<AgentSync>>> = self.agents.lock().unwrap().values().cloned().collect();
        let rows: Vec<serde_json::Value> = agents
            .iter()
            .map(|a| {
                let a = a.lock().unwrap();
                let mut v = serde_json::to_value(&*a).unwrap_or_default();
                for (t, ts) in &a.types {
                    v["types"][t]["in_sync"] = serde_json::Value::Bool(ts.in_sync(generation));
                    v["types"][t]["unanswered"] = ts.pending.len().into();
                }
                v
            })
            .collect();
        serde_json::json!({ "generation": generation, "agents": rows })
    }
}

/// A registered agent; dropping it unregisters.
pub struct Connected {
    registry: Arc<Registry>,
    id: u64,
    pub agent: Arc<Mutex<AgentSync>>,
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.registry.agents.lock().unwrap().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn ack_clears_and_measures_a_change() {
        let t0 = Instant::now();
        let mut s = TypeSync::default();
        s.sent(1, names(&["a", "b"]), t0, Reason::Initial);
        assert!(!s.in_sync(0), "sent, not acked");
        assert_eq!(s.answered(1, None, t0 + Duration::from_millis(5)), Answer::Acked { latency: None });
        assert!(s.in_sync(0));
        assert!(!s.in_sync(1), "a newer snapshot is not held yet");
        s.sent(2, names(&["a"]), t0, Reason::Change);
        assert_eq!(s.answered(2, None, t0 + Duration::from_millis(7)), Answer::Acked { latency: Some(Duration::from_millis(7)) });
        assert_eq!(s.answered(2, None, t0), Answer::Unknown, "answered once");
        assert_eq!(s.answered(9, None, t0), Answer::Unknown, "never sent");
    }

    #[test]
    fn nack_names_the_resources_the_reason_names() {
        let t0 = Instant::now();
        let mut s = TypeSync::default();
        s.sent(3, names(&["ns/p", "ns/q", "ns/pp"]), t0, Reason::Change);
        let why = "ns/p: scope 9 is not a known scope; ns/pp: empty: no rules";
        assert_eq!(s.answered(3, Some(why), t0), Answer::Nacked { names: names(&["ns/p", "ns/pp"]), reason: why.into() });
        assert_eq!(s.last_acked_nonce, None);
        assert_eq!(s.nacks.keys().collect::<Vec<_>>(), vec!["ns/p", "ns/pp"]);
        assert!(!s.in_sync(0));
        // A reason naming nothing we sent blames the whole push.
        s.sent(4, names(&["x"]), t0, Reason::Change);
        assert!(matches!(s.answered(4, Some("garbled"), t0), Answer::Nacked { names, .. } if names == vec!["x"]));
        // A later good version of a rejected resource, ACKed, clears it.
        s.sent(5, names(&["ns/p", "ns/pp", "x"]), t0, Reason::Change);
        assert!(matches!(s.answered(5, None, t0), Answer::Acked { .. }));
        assert!(s.nacks.is_empty() && s.in_sync(0));
    }

    #[test]
    fn blamed_names_may_hold_colons() {
        let b = blamed("ns/[fd00::1]: bad port; x: y");
        assert!(b.contains("ns/[fd00::1]") && b.contains("x"));
        assert!(!b.contains("y") && !b.contains("ns/[fd00::1]: bad port"));
    }

    #[test]
    fn a_silent_agent_costs_bounded_memory() {
        let t0 = Instant::now();
        let mut s = TypeSync::default();
        for n in 0..1000 {
            s.sent(n, names(&["a"]), t0, Reason::Change);
        }
        assert_eq!(s.pending.len(), MAX_PENDING);
        assert_eq!(s.answered(1, None, t0), Answer::Unknown, "forgotten");
        assert!(matches!(s.answered(999, None, t0), Answer::Acked { .. }));
        assert!(s.pending.is_empty(), "an answer settles older pushes");
    }

    #[test]
    fn registry_forgets_disconnected_agents() {
        let r = Arc::new(Registry::default());
        let a = r.connect("n1", "1.2.3.4:5");
        a.agent.lock().unwrap().types.entry("T".into()).or_default().sent(1, vec![], Instant::now(), Reason::Initial);
        let doc = r.syncz(0);
        assert_eq!(doc["agents"][0]["node"], "n1");
        assert_eq!(doc["agents"][0]["types"]["T"]["in_sync"], false);
        assert_eq!(doc["agents"][0]["types"]["T"]["last_sent_nonce"], 1);
        assert_eq!(doc["agents"][0]["types"]["T"]["unanswered"], 1);
        drop(a);
        assert!(r.is_empty());
    }
}
