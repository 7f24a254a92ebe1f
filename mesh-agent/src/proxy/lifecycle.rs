//! The life of a pod proxy's listeners around a hand-over: whether they accept
//! ([`Phase`]), the signals every task listens to ([`Signals`]), and the count of
//! live connections a drain waits for ([`Live`]).
use std::sync::Arc;

use tokio::sync::watch;

use super::Drain;

/// Whether a pod's listeners accept. A successor agent holds handed-over listeners
/// until it has taken over every pod (so a failed hand-over accepted nothing); a
/// predecessor quiesces them once its successor confirmed: it stops accepting, and
/// its HBONE connections take no new streams, while established connections go on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Held,
    Accepting,
    Quiesced,
}

/// Connections a pod proxy carries right now (for the drain after a hand-over).
#[derive(Clone, Default)]
pub(crate) struct Live(Arc<watch::Sender<usize>>);

/// Counts one connection while it lives.
pub(crate) struct LiveGuard(Arc<watch::Sender<usize>>);

impl Live {
    pub fn guard(&self) -> LiveGuard {
        self.0.send_modify(|n| *n += 1);
        LiveGuard(self.0.clone())
    }

    pub fn count(&self) -> usize {
        *self.0.borrow()
    }

    /// Returns once no connection is left.
    pub async fn idle(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// What every task of one pod proxy listens to: stop now (`drain`), the accept
/// phase, and the count of live connections.
#[derive(Clone)]
pub(crate) struct Signals {
    pub drain: Drain,
    pub phase: watch::Receiver<Phase>,
    pub live: Live,
}

/// Returns once the phase is `Quiesced`; never if the proxy is gone (then `drain`
/// ends everything anyway).
pub(crate) async fn quiesced(mut phase: watch::Receiver<Phase>) {
    if phase.wait_for(|p| *p == Phase::Quiesced).await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::InboundConfig;
    use crate::proxy::{accept_loop, Direction, EnrolledPod};
    use tokio::net::TcpListener;
    use std::time::Duration;

    fn pod() -> EnrolledPod {
        EnrolledPod {
            uid: "u".into(),
            namespace: "default".into(),
            name: "p".into(),
            service_account: "p".into(),
            ips: vec![],
            netns: "/nonexistent".into(),
            identity: "spiffe://cluster.local/ns/default/sa/p".parse().unwrap(),
            inbound: InboundConfig::default(),
        }
    }

    /// The accept gate of a hand-over on a real listener: held, nothing is accepted
    /// (the connection waits in the queue); accepting, it is served and counted while
    /// it lives; quiesced, the loop ends and the connection goes on.
    #[tokio::test]
    async fn listeners_accept_only_between_open_and_quiesce() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_stop, drain) = watch::channel(());
        let (phase, phase_rx) = watch::channel(Phase::Held);
        let live = Live::default();
        let signals = Signals { drain, phase: phase_rx, live: live.clone() };
        let (served_tx, mut served) = tokio::sync::mpsc::unbounded_channel();
        let (release_tx, release) = watch::channel(false);
        let pod = pod();
        let accept = tokio::spawn(async move {
            accept_loop(listener, Direction::Outbound, &pod, signals, move |_stream, peer| {
                let (served_tx, mut release) = (served_tx.clone(), release.clone());
                async move {
                    let _ = served_tx.send(peer);
                    let _ = release.wait_for(|r| *r).await;
                }
            })
            .await
        });
        let _queued = tokio::net::TcpStream::connect(addr).await.unwrap();
        let held = tokio::time::timeout(Duration::from_millis(200), served.recv()).await;
        assert!(held.is_err(), "a held listener accepted");
        phase.send_replace(Phase::Accepting);
        assert!(tokio::time::timeout(Duration::from_secs(5), served.recv()).await.unwrap().is_some());
        assert_eq!(live.count(), 1);
        phase.send_replace(Phase::Quiesced);
        tokio::time::timeout(Duration::from_secs(5), accept).await.expect("accept loop did not end").unwrap();
        assert_eq!(live.count(), 1, "a quiesced listener closed its connection");
        release_tx.send_replace(true);
        tokio::time::timeout(Duration::from_secs(5), live.idle()).await.expect("connection never ended");
    }
}
