//! Datagrams from the network as a node's gossip takes them: the wire
//! envelope, then foca's SWIM message decoding and state machine, with this
//! node's identity type and settings (`strata_membership::protocol`). The
//! input is a sequence of datagrams, each a 2-byte big-endian length and
//! its bytes; after each, every timer the node scheduled fires at once (a
//! simulated clock), and every datagram it wants to send must fit the
//! envelope.
#![no_main]

use std::net::SocketAddr;

use foca::AccumulatingRuntime;
use libfuzzer_sys::fuzz_target;
use strata_membership::{protocol, Gossip, Member};
use strata_wire::{decode_gossip, encode_gossip};

fn member(name: &str, port: u16) -> Member {
    Member { name: name.into(), addr: SocketAddr::from(([127, 0, 0, 1], port)), incarnation: 1 }
}

fn drain(foca: &mut Gossip, runtime: &mut AccumulatingRuntime<Member>) {
    // Timers fire in turn; a node whose timers keep scheduling timers
    // stops after a bounded number of them.
    for _ in 0..64 {
        while let Some((_, data)) = runtime.to_send() {
            encode_gossip(&data).expect("what gossip sends fits a datagram");
        }
        while runtime.to_notify().is_some() {}
        let Some((_, timer)) = runtime.to_schedule() else { return };
        let _ = foca.handle_timer(timer, &mut *runtime);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut foca = protocol(member("me", 1), 7);
    let mut runtime = AccumulatingRuntime::new();
    // Two members known already, so probes and suspicion have someone to act on.
    let _ = foca.apply_many([member("b", 2), member("c", 3)].into_iter().map(foca::Member::alive), false, &mut runtime);
    drain(&mut foca, &mut runtime);
    let mut input = data;
    while input.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([input[0], input[1]])).min(input.len() - 2);
        let (datagram, rest) = input[2..].split_at(len);
        input = rest;
        if let Ok(payload) = decode_gossip(datagram) {
            let _ = foca.handle_data(&payload, &mut runtime);
        }
        drain(&mut foca, &mut runtime);
    }
});
