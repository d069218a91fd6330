//! Bytes arriving on the node's control socket: read as the node reads
//! requests (async reader) and as a client reads replies (sync reader),
//! message after message until the stream ends or a message is refused.
//! Both readers give the same messages and the same error on the same
//! bytes; every message that decodes encodes again and decodes to itself.
//! Messages are compared by their encoding: replies carry floats (store
//! ratios, read latencies), and a NaN is not equal to itself.
#![no_main]

use std::future::Future;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use strata_control::{encode, read_message, read_message_async, Reply, Request};

/// Runs a future that never waits (it reads from memory) to its end.
fn at_once<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("a read from memory waited"),
    }
}

fn stream<T>(data: &[u8])
where
    T: serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let (mut sync_input, mut async_input) = (data, data);
    loop {
        let sync = read_message::<T>(&mut sync_input);
        let asynchronous = at_once(read_message_async::<T>(&mut async_input));
        match (sync, asynchronous) {
            (Ok(Some(message)), Ok(Some(same))) => {
                let frame = encode(&message).expect("a decoded message encodes");
                assert_eq!(frame, encode(&same).expect("encodes"), "the readers disagree");
                let again = read_message::<T>(&mut &frame[..]).expect("decodes again").expect("a message");
                assert_eq!(encode(&again).expect("encodes"), frame, "it does not decode to itself");
            }
            (Ok(None), Ok(None)) => return,
            (Err(a), Err(b)) => {
                assert_eq!(a.to_string(), b.to_string(), "the readers refuse differently");
                return;
            }
            (a, b) => panic!("the readers disagree: {a:?} vs {b:?}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    stream::<Request>(data);
    stream::<Reply>(data);
});
