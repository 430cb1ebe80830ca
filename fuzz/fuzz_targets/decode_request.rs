//! Every V2 request decoder on arbitrary bytes: JSON alone, JSON followed by binary tensors (the
//! first two bytes choose the header length) and the raw binary form. Must never panic.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = cairn::protocol::decode_request(Bytes::copy_from_slice(data), None);
    let _ = cairn::protocol::decode_request(Bytes::copy_from_slice(data), Some(0));
    if let [a, b, rest @ ..] = data {
        let header_len = (usize::from(*a) << 8 | usize::from(*b)) % (rest.len() + 2);
        let _ = cairn::protocol::decode_request(Bytes::copy_from_slice(rest), Some(header_len));
    }
});
