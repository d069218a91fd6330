//! Who is in the cluster: SWIM gossip (foca) over QUIC datagrams, so
//! membership traffic is mutually authenticated like everything else.
//!
//! A node joins by announcing itself to the seed addresses of its config;
//! foca spreads joins, probes members and declares the silent ones down,
//! and a node that finds itself declared down rejoins under a new
//! incarnation. The live view is published on a watch channel.
//!
//! [`Membership`] drives the protocol on a task of its own; [`protocol`]
//! builds the same state machine without I/O (tests, the fuzz target).
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use foca::{AccumulatingRuntime, Config, Foca, Identity, OwnedNotification, PostcardCodec, Timer};
use rand010::SeedableRng;
use serde::{Deserialize, Serialize};
use strata_net::Pool;
use strata_types::NodeId;
use tokio::sync::{mpsc, oneshot, watch};

/// A member as gossip knows it: the node name of its certificate, its QUIC
/// address, and an incarnation that grows each time it (re)joins.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub addr: SocketAddr,
    pub incarnation: u64,
}

impl Member {
    pub fn node_id(&self) -> NodeId {
        NodeId::of(self.name.as_bytes())
    }

    /// A seed known only by address: the real identity replaces it.
    fn seed(addr: SocketAddr) -> Self {
        Self { name: String::new(), addr, incarnation: 0 }
    }
}

impl Identity for Member {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Self { incarnation: self.incarnation.wrapping_add(1).max(1), ..self.clone() })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.incarnation > adversary.incarnation
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    Alive,
    Suspect,
    Down,
}

/// One row of the membership view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    pub name: String,
    pub addr: SocketAddr,
    pub state: MemberState,
    pub incarnation: u64,
}

enum Input {
    Data(Bytes),
    Timer(Timer<Member>),
    Leave(oneshot::Sender<()>),
}

/// The running membership protocol of this node.
pub struct Membership {
    me: Member,
    input: mpsc::Sender<Input>,
    view: watch::Receiver<Vec<MemberView>>,
}

/// Gossip settings: SWIM's LAN profile, datagrams that fit QUIC's minimum
/// MTU, and seeds that were down asked again every few seconds.
fn config() -> Config {
    let mut config = Config::new_lan(NonZeroU32::new(64).unwrap_or(NonZeroU32::MIN));
    config.max_packet_size = NonZeroUsize::new(1000).unwrap_or(NonZeroUsize::MIN);
    config.periodic_announce_to_down_members = Some(foca::PeriodicParams {
        frequency: Duration::from_secs(3),
        num_members: NonZeroUsize::MIN.saturating_add(2),
    });
    config.remove_down_after = Some(Duration::from_secs(60));
    config
}

/// The SWIM state machine of one node as [`Membership`] runs it.
pub type Gossip = Foca<Member, PostcardCodec, rand010::rngs::StdRng, foca::NoCustomBroadcast>;

/// The state machine [`Membership`] runs, with nothing attached: feed it
/// payloads (`strata_wire::decode_gossip` of a datagram) with
/// `handle_data` and timers with `handle_timer`, and carry out what the
/// runtime then holds. `seed` seeds its random choices (probe order).
pub fn protocol(me: Member, seed: u64) -> Gossip {
    Foca::new(me, config(), rand010::rngs::StdRng::seed_from_u64(seed), PostcardCodec)
}

impl Membership {
    /// Starts gossip as `me`, joining through `seeds`. Datagrams travel on
    /// `pool`'s connections; what peers send arrives through [`Self::receive`].
    pub fn start(me: Member, seeds: Vec<SocketAddr>, pool: Arc<Pool>) -> Self {
        let (input, mut inbox) = mpsc::channel::<Input>(1024);
        let (publish, view) = watch::channel(Vec::new());
        let seed = me.incarnation ^ u64::from(std::process::id());
        let mut foca = protocol(me.clone(), seed);
        let mut runtime = AccumulatingRuntime::new();
        let seeds: Vec<Member> = seeds.into_iter().filter(|a| *a != me.addr).map(Member::seed).collect();
        let driver = Driver { pool, input: input.clone(), publish };
        // Seeds start as "down" so foca keeps announcing to them until they answer.
        if let Err(e) = foca.apply_many(seeds.iter().cloned().map(foca::Member::down), false, &mut runtime) {
            tracing::warn!(error = %e, "seeding membership");
        }
        for seed in &seeds {
            if let Err(e) = foca.announce(seed.clone(), &mut runtime) {
                tracing::warn!(seed = %seed.addr, error = %e, "announcing to a seed");
            }
        }
        tokio::spawn(async move {
            driver.drain(&mut foca, &mut runtime);
            while let Some(input) = inbox.recv().await {
                let result = match input {
                    Input::Data(data) => foca.handle_data(&data, &mut runtime),
                    Input::Timer(timer) => foca.handle_timer(timer, &mut runtime),
                    Input::Leave(done) => {
                        let result = foca.leave_cluster(&mut runtime);
                        driver.drain(&mut foca, &mut runtime);
                        let _ = done.send(());
                        result
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(error = %e, "gossip input refused");
                }
                driver.drain(&mut foca, &mut runtime);
            }
        });
        Self { me, input, view }
    }

    pub fn me(&self) -> &Member {
        &self.me
    }

    /// A datagram a peer sent. Dropped when the protocol is behind, as the
    /// network may drop it: SWIM tolerates loss.
    pub fn receive(&self, data: Bytes) {
        match strata_wire::decode_gossip(&data) {
            Ok(payload) => {
                let _ = self.input.try_send(Input::Data(Bytes::from(payload)));
            }
            Err(e) => tracing::debug!(error = %e, "datagram dropped"),
        }
    }

    /// The members other than this node, with their states.
    pub fn view(&self) -> Vec<MemberView> {
        self.view.borrow().clone()
    }

    /// Notified whenever the view changes.
    pub fn subscribe(&self) -> watch::Receiver<Vec<MemberView>> {
        self.view.clone()
    }

    /// The live members (alive or suspect), this node included.
    pub fn live(&self) -> Vec<Member> {
        let mut live: Vec<Member> = self
            .view
            .borrow()
            .iter()
            .filter(|m| m.state != MemberState::Down)
            .map(|m| Member { name: m.name.clone(), addr: m.addr, incarnation: m.incarnation })
            .collect();
        live.push(self.me.clone());
        live
    }

    /// Tells the cluster this node leaves, and waits (bounded) until the
    /// message is on its way.
    pub async fn leave(&self) {
        let (done, wait) = oneshot::channel();
        if self.input.send(Input::Leave(done)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), wait).await;
            // Give the datagrams a moment on the wire before the endpoint closes.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

struct Driver {
    pool: Arc<Pool>,
    input: mpsc::Sender<Input>,
    publish: watch::Sender<Vec<MemberView>>,
}

impl Driver {
    /// Carries out what foca asked for: datagrams, timers, notifications.
    fn drain(&self, foca: &mut Gossip, runtime: &mut AccumulatingRuntime<Member>) {
        while let Some((to, data)) = runtime.to_send() {
            let data = match strata_wire::encode_gossip(&data) {
                Ok(d) => Bytes::from(d),
                Err(e) => {
                    tracing::warn!(error = %e, "gossip message too large; dropped");
                    continue;
                }
            };
            let pool = self.pool.clone();
            tokio::spawn(async move {
                if let Err(e) =
                    tokio::time::timeout(Duration::from_secs(2), pool.send_datagram(to.addr, data)).await
                {
                    tracing::trace!(peer = %to.addr, error = %e, "gossip datagram not sent");
                }
            });
        }
        while let Some((after, timer)) = runtime.to_schedule() {
            let input = self.input.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let _ = input.send(Input::Timer(timer)).await;
            });
        }
        let mut changed = false;
        while let Some(notification) = runtime.to_notify() {
            match notification {
                OwnedNotification::MemberUp(m) => {
                    tracing::info!(node = %m.name, addr = %m.addr, "member up");
                    changed = true;
                }
                OwnedNotification::MemberDown(m) => {
                    tracing::warn!(node = %m.name, addr = %m.addr, "member down");
                    changed = true;
                }
                OwnedNotification::Rename(old, new) => {
                    tracing::info!(node = %new.name, addr = %new.addr, old = old.incarnation, new = new.incarnation, "member rejoined");
                    changed = true;
                }
                OwnedNotification::Rejoin(me) => {
                    tracing::warn!(incarnation = me.incarnation, "declared down by the cluster: rejoined");
                }
                OwnedNotification::Defunct => tracing::info!("this node is out of the cluster"),
                _ => {}
            }
        }
        let view: Vec<MemberView> = foca
            .iter_membership_state()
            .filter(|m| !m.id().name.is_empty())
            .map(|m| MemberView {
                name: m.id().name.clone(),
                addr: m.id().addr,
                incarnation: m.id().incarnation,
                state: match m.state() {
                    foca::State::Alive => MemberState::Alive,
                    foca::State::Suspect => MemberState::Suspect,
                    foca::State::Down => MemberState::Down,
                },
            })
            .collect();
        if changed || *self.publish.borrow() != view {
            self.publish.send_replace(view);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, port: u16) -> Member {
        Member { name: name.into(), addr: SocketAddr::from(([127, 0, 0, 1], port)), incarnation: 1 }
    }

    /// Delivers every datagram each side wants to send, through the wire
    /// envelope, until neither has more; timers are not run (no time passes).
    fn exchange(nodes: &mut [(Gossip, AccumulatingRuntime<Member>)]) {
        for _ in 0..16 {
            let mut sent = Vec::new();
            for (_, runtime) in nodes.iter_mut() {
                while let Some((to, data)) = runtime.to_send() {
                    sent.push((to.addr, strata_wire::encode_gossip(&data).unwrap()));
                }
            }
            if sent.is_empty() {
                return;
            }
            for (to, datagram) in sent {
                let (foca, runtime) = nodes.iter_mut().find(|(f, _)| f.identity().addr == to).unwrap();
                let payload = strata_wire::decode_gossip(&datagram).unwrap();
                foca.handle_data(&payload, runtime).unwrap();
            }
        }
        panic!("gossip did not settle");
    }

    #[test]
    fn a_node_announcing_to_a_seed_joins_it_without_sockets() {
        let (a, b) = (member("a", 1), member("b", 2));
        let mut nodes = [
            (protocol(a.clone(), 1), AccumulatingRuntime::new()),
            (protocol(b.clone(), 2), AccumulatingRuntime::new()),
        ];
        let (foca, runtime) = &mut nodes[0];
        foca.announce(Member::seed(b.addr), runtime).unwrap();
        exchange(&mut nodes);
        let knows = |foca: &Gossip| foca.iter_members().map(|m| m.id().clone()).collect::<Vec<_>>();
        assert_eq!(knows(&nodes[0].0), vec![b]);
        assert_eq!(knows(&nodes[1].0), vec![a]);
    }

    #[test]
    fn garbage_payloads_are_refused_and_change_nothing() {
        let mut foca = protocol(member("a", 1), 1);
        let mut runtime = AccumulatingRuntime::new();
        for garbage in [&b""[..], b"\x00", b"\xff\xff\xff\xff", &[7u8; 999]] {
            assert!(foca.handle_data(garbage, &mut runtime).is_err());
        }
        assert_eq!(foca.num_members(), 0);
        assert!(runtime.to_send().is_none());
    }
}
