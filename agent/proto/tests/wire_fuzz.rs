//! The wire decoder against hostile bytes: random input, and valid
//! messages with bytes flipped, cut or spliced. Decoding never panics, and
//! whatever decodes re-encodes within the size limit. (A coverage-guided
//! target for the same function lives in `agent/fuzz`.)

use armillary_proto::message::MAX_MESSAGE_BYTES;
use armillary_proto::{AfcCert, Message, Row, ZonePath};
use proptest::prelude::*;
use std::sync::Arc;
use zone_sql::{Attrs, Value};

fn sample_messages() -> Vec<Vec<u8>> {
    let leaf = ZonePath::parse("/eu/paris/h7").unwrap();
    let mut attrs = Attrs::new();
    attrs.set("load", Value::Float(0.5));
    attrs.set("contacts", Value::list(["10.0.0.7:7700"]));
    attrs.set("role", Value::Str("db".into()));
    let afc = Arc::new(AfcCert::new(
        ZonePath::root(),
        "maxload",
        "SELECT MAX(load) AS load",
        9,
    ));
    let row = Arc::new(Row::new(
        leaf.clone(),
        leaf.clone(),
        1_000,
        attrs,
        vec![afc],
    ));
    vec![
        Message::Ack {
            sender: leaf.clone(),
            rows: vec![row.clone()],
        }
        .encode(),
        Message::Push {
            target: leaf.parent().unwrap(),
            rows: vec![row.clone(), row],
        }
        .encode(),
    ]
}

fn check(bytes: &[u8]) {
    if let Ok(msg) = Message::decode(bytes) {
        let again = msg.encode();
        assert!(again.len() <= MAX_MESSAGE_BYTES);
        assert!(
            Message::decode(&again).is_ok(),
            "a decoded message must re-decode"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        check(&bytes);
    }

    #[test]
    fn mutated_messages_never_panic(
        which in 0usize..2,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        cut in any::<usize>(),
        splice in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut bytes = sample_messages()[which].clone();
        for (at, b) in flips {
            let n = bytes.len();
            bytes[at % n] = b;
        }
        let keep = cut % (bytes.len() + 1);
        bytes.truncate(keep);
        bytes.extend(splice);
        check(&bytes);
    }
}

#[test]
fn oversized_input_is_refused_before_parsing() {
    let big = vec![0u8; MAX_MESSAGE_BYTES + 1];
    assert!(Message::decode(&big).is_err());
}
