//! Looking up a workload this agent does not hold, by address, from the control plane
//! (ztunnel's on-demand lookup).
//!
//! A node whose pods' egress a Sidecar narrows holds only the workloads it needs
//! (`controlplane::scope`), but any pod of the mesh may call its pods. When an HBONE
//! caller's address is unknown, the inbound path asks here: the xDS client subscribes
//! to the Address name `/<ip>` (no network, as ztunnel names it), and the control plane
//! answers with the workloads that have the address (the name as an alias) or with the
//! name in `removed_resources` when none has it. The caller waits at most
//! [`LOOKUP_TIMEOUT`]; without an answer it is refused (fail closed).
//!
//! Looked-up addresses stay subscribed (at most [`MAX_SUBSCRIBED`], the oldest dropped
//! first) and are asked again after a reconnect, so later changes to them arrive like
//! any other. That includes an address no workload has yet: a pod that calls before
//! the control plane has seen its IP is refused once, and its workload is pushed here
//! as soon as the control plane sees it. A miss is answered from memory for
//! [`MISS_TTL`], so a stream of unknown callers does not become a stream of lookups.
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

/// How long a caller waits for the control plane's answer.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// Addresses kept subscribed; past this the oldest is unsubscribed.
pub const MAX_SUBSCRIBED: usize = 4096;
/// How long an address no workload has is answered from memory.
pub const MISS_TTL: Duration = Duration::from_secs(1);
/// Misses remembered at most (the oldest are forgotten first).
const MAX_MISSES: usize = 4096;

/// The Address resource name an on-demand lookup of `ip` subscribes to.
pub fn name(ip: IpAddr) -> String {
    format!("/{ip}")
}

/// The address an on-demand name stands for.
pub fn address(name: &str) -> Option<IpAddr> {
    name.strip_prefix('/')?.parse().ok()
}

/// What the xDS client sends for the lookups.
#[derive(Debug, PartialEq, Eq)]
pub enum Ask {
    Subscribe(IpAddr),
    Unsubscribe(IpAddr),
}

#[derive(Default)]
struct Inner {
    /// The live xDS session's queue (`None` between sessions).
    session: Option<mpsc::UnboundedSender<Ask>>,
    /// Subscribed addresses, oldest first.
    subscribed: VecDeque<IpAddr>,
    waiting: HashMap<IpAddr, Vec<oneshot::Sender<()>>>,
    misses: HashMap<IpAddr, Instant>,
}

/// The agent's on-demand lookups, shared by the proxy (which asks) and the xDS client
/// (which sends and answers).
#[derive(Default)]
pub struct OnDemand {
    inner: Mutex<Inner>,
}

impl OnDemand {
    /// Asks the control plane about `ip` and waits for its answer (at most `timeout`).
    /// `known` says whether the agent holds a workload with the address now; it is
    /// asked again once the answer is in. True: it does.
    pub async fn lookup(&self, ip: IpAddr, timeout: Duration, known: impl Fn() -> bool) -> bool {
        let rx = {
            let mut s = self.inner.lock().unwrap();
            if known() {
                return true;
            }
            if s.misses.get(&ip).is_some_and(|at| at.elapsed() < MISS_TTL) {
                self.count("missing");
                return false;
            }
            let (tx, rx) = oneshot::channel();
            s.waiting.entry(ip).or_default().push(tx);
            if !s.subscribed.contains(&ip) {
                s.subscribed.push_back(ip);
                if let Some(q) = &s.session {
                    let _ = q.send(Ask::Subscribe(ip));
                }
                if s.subscribed.len() > MAX_SUBSCRIBED {
                    let old = s.subscribed.pop_front().expect("over the limit");
                    if let Some(q) = &s.session {
                        let _ = q.send(Ask::Unsubscribe(old));
                    }
                }
            }
            rx
        };
        let answered = tokio::time::timeout(timeout, rx).await.is_ok();
        let found = known();
        self.count(match (found, answered) {
            (true, _) => "found",
            (false, true) => "missing",
            (false, false) => "timeout",
        });
        found
    }

    fn count(&self, outcome: &'static str) {
        crate::metrics::PROXY.lookups.get_or_create(&crate::metrics::OutcomeLabels { outcome }).inc();
    }

    /// A new xDS session: where to send lookups from now on, and the addresses to
    /// subscribe to again.
    pub fn attach(&self) -> (mpsc::UnboundedReceiver<Ask>, Vec<IpAddr>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut s = self.inner.lock().unwrap();
        s.session = Some(tx);
        (rx, s.subscribed.iter().copied().collect())
    }

    /// The control plane answered: `found` names the addresses whose workloads came
    /// (and every address the agent now holds a workload for), `missing` those no
    /// workload has. Wakes their waiters; misses are remembered (and stay subscribed).
    pub fn answered(&self, found: impl IntoIterator<Item = IpAddr>, missing: impl IntoIterator<Item = IpAddr>) {
        let mut s = self.inner.lock().unwrap();
        for ip in found {
            s.misses.remove(&ip);
            for w in s.waiting.remove(&ip).into_iter().flatten() {
                let _ = w.send(());
            }
        }
        for ip in missing {
            if s.misses.len() >= MAX_MISSES {
                let now = Instant::now();
                s.misses.retain(|_, at| now.duration_since(*at) < MISS_TTL);
                if s.misses.len() >= MAX_MISSES {
                    s.misses.clear();
                }
            }
            s.misses.insert(ip, Instant::now());
            for w in s.waiting.remove(&ip).into_iter().flatten() {
                let _ = w.send(());
            }
        }
    }

    /// Addresses with a lookup in flight.
    pub fn waiting(&self) -> Vec<IpAddr> {
        self.inner.lock().unwrap().waiting.keys().copied().collect()
    }

    /// The addresses subscribed, oldest first (for `/config_dump`).
    pub fn subscribed(&self) -> Vec<IpAddr> {
        self.inner.lock().unwrap().subscribed.iter().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn names_round_trip() {
        for a in ["10.0.0.1", "fd00::1"] {
            assert_eq!(address(&name(ip(a))), Some(ip(a)));
        }
        assert_eq!(address("Kubernetes//Pod/a/b"), None);
        assert_eq!(address("10.0.0.1"), None, "names carry the network part");
    }

    #[tokio::test]
    async fn a_lookup_subscribes_once_and_wakes_on_the_answer() {
        let d = Arc::new(OnDemand::default());
        let (mut rx, again) = d.attach();
        assert!(again.is_empty());
        let known = Arc::new(AtomicBool::new(false));
        let (d2, k2) = (d.clone(), known.clone());
        let first = tokio::spawn(async move { d2.lookup(ip("10.0.0.9"), LOOKUP_TIMEOUT, || k2.load(Ordering::SeqCst)).await });
        let (d3, k3) = (d.clone(), known.clone());
        let second = tokio::spawn(async move { d3.lookup(ip("10.0.0.9"), LOOKUP_TIMEOUT, || k3.load(Ordering::SeqCst)).await });
        assert_eq!(rx.recv().await, Some(Ask::Subscribe(ip("10.0.0.9"))));
        while d.inner.lock().unwrap().waiting.get(&ip("10.0.0.9")).map_or(0, Vec::len) < 2 {
            tokio::task::yield_now().await;
        }
        known.store(true, Ordering::SeqCst);
        d.answered([ip("10.0.0.9")], []);
        assert!(first.await.unwrap() && second.await.unwrap());
        assert!(rx.try_recv().is_err(), "asked once for both");
        // A reconnect subscribes again to what was found.
        let (_rx, again) = d.attach();
        assert_eq!(again, [ip("10.0.0.9")]);
    }

    #[tokio::test]
    async fn a_miss_is_remembered_and_a_silence_times_out() {
        let d = Arc::new(OnDemand::default());
        let (mut rx, _) = d.attach();
        let d2 = d.clone();
        let waiter = tokio::spawn(async move { d2.lookup(ip("10.0.0.7"), LOOKUP_TIMEOUT, || false).await });
        assert_eq!(rx.recv().await, Some(Ask::Subscribe(ip("10.0.0.7"))));
        while d.waiting().is_empty() {
            tokio::task::yield_now().await;
        }
        d.answered([], [ip("10.0.0.7")]);
        assert!(!waiter.await.unwrap());
        assert_eq!(d.subscribed(), [ip("10.0.0.7")], "kept: the control plane sends it if it appears");
        // Remembered: answered without asking.
        assert!(!d.lookup(ip("10.0.0.7"), LOOKUP_TIMEOUT, || false).await);
        assert!(rx.try_recv().is_err());
        // No answer at all: the timeout ends the wait.
        let t = Instant::now();
        assert!(!d.lookup(ip("10.0.0.8"), Duration::from_millis(50), || false).await);
        assert!(t.elapsed() >= Duration::from_millis(50));
    }

    #[tokio::test]
    async fn subscriptions_are_bounded_oldest_first() {
        let d = OnDemand::default();
        let (mut rx, _) = d.attach();
        for i in 0..=MAX_SUBSCRIBED as u32 {
            let a = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert!(!d.lookup(a, Duration::ZERO, || false).await);
        }
        assert_eq!(d.subscribed().len(), MAX_SUBSCRIBED);
        let mut unsubscribed = Vec::new();
        while let Ok(a) = rx.try_recv() {
            if let Ask::Unsubscribe(a) = a {
                unsubscribed.push(a);
            }
        }
        assert_eq!(unsubscribed, [ip("10.0.0.0")]);
    }
}
