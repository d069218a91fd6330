//! Bytes arriving on the node's control socket: read as the node reads
//! requests and as a client reads replies, message after message until the
//! stream ends or a message is refused. Every message that decodes encodes
//! again and decodes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_control::{encode, read_message, Reply, Request};

fn stream<T>(data: &[u8])
where
    T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
{
    let mut input = data;
    while let Ok(Some(message)) = read_message::<T>(&mut input) {
        let frame = encode(&message).expect("a decoded message encodes");
        let again = read_message::<T>(&mut &frame[..]).expect("decodes again");
        assert_eq!(again.as_ref(), Some(&message));
    }
}

fuzz_target!(|data: &[u8]| {
    stream::<Request>(data);
    stream::<Reply>(data);
});
