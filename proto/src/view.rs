//! [`EnvelopeRef`]: an envelope read in place, its strings and payload borrowed from the record.
//!
//! Readers that only look at an envelope (the lake writes each one out once) pay for prost's
//! owned decode in allocations: a `String` per field, a `Vec` for the payload and a B-tree for
//! the attributes. This view takes none of them. It accepts exactly the bytes prost accepts and
//! reads the same values from them (the tests compare the two on generated and damaged input),
//! using prost's own wire helpers for varints, keys and timestamps.

use std::collections::BTreeMap;

use prost::bytes::Buf;
use prost::encoding::{DecodeContext, WireType, check_wire_type, decode_key, decode_varint};
use prost_types::Timestamp;

use crate::Envelope;

/// Why bytes are not an envelope.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error(transparent)]
    Wire(#[from] prost::DecodeError),
    #[error("field {0} is not UTF-8")]
    NotUtf8(u32),
    #[error("field {0} is longer than the bytes left")]
    Truncated(u32),
    #[error("unknown fields nest deeper than protobuf's recursion limit")]
    TooDeep,
    #[error("a group ends that did not start")]
    UnexpectedEndGroup,
}

/// Prost's recursion limit: how deep unknown groups may nest.
const RECURSION_LIMIT: u32 = 100;

/// An [`Envelope`] borrowing from the bytes it was decoded from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EnvelopeRef<'a> {
    pub event_id: &'a str,
    pub event_name: &'a str,
    pub event_time: Option<Timestamp>,
    pub ingest_time: Option<Timestamp>,
    pub producer: &'a str,
    pub trace_id: &'a str,
    pub user_id: &'a str,
    pub device_id: &'a str,
    /// Sorted by key, one entry per key (the last one on the wire), as [`Envelope`]'s map
    /// holds them.
    pub attributes: Vec<(&'a str, &'a str)>,
    pub content_type: &'a str,
    pub payload: &'a [u8],
    pub history_id: &'a str,
}

/// The fields the fan-out engine routes by. [`EnvelopeHead::read`] checks the whole record by
/// the same rules as [`EnvelopeRef::decode`] (so a record routed is a record the lake can
/// write) but keeps only these, allocating nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EnvelopeHead<'a> {
    pub event_id: &'a str,
    pub event_name: &'a str,
}

impl<'a> EnvelopeHead<'a> {
    /// Accepts exactly the bytes [`EnvelopeRef::decode`] accepts, with the same id and name.
    pub fn read(buf: &'a [u8]) -> Result<EnvelopeHead<'a>, ViewError> {
        let envelope = EnvelopeRef::read(buf, false)?;
        Ok(EnvelopeHead {
            event_id: envelope.event_id,
            event_name: envelope.event_name,
        })
    }
}

impl<'a> EnvelopeRef<'a> {
    /// Reads an envelope from its protobuf encoding. Fields may repeat (the last wins, and
    /// timestamps merge), unknown fields are skipped, as for any protobuf message.
    pub fn decode(buf: &'a [u8]) -> Result<EnvelopeRef<'a>, ViewError> {
        EnvelopeRef::read(buf, true)
    }

    /// Reads and checks every field; `attributes` says whether to keep the map entries.
    fn read(mut buf: &'a [u8], attributes: bool) -> Result<EnvelopeRef<'a>, ViewError> {
        let mut envelope = EnvelopeRef::default();
        let mut sorted = true;
        while buf.has_remaining() {
            let (tag, wire_type) = decode_key(&mut buf)?;
            match tag {
                1 => envelope.event_id = string(tag, wire_type, &mut buf)?,
                2 => envelope.event_name = string(tag, wire_type, &mut buf)?,
                3 => timestamp(wire_type, &mut envelope.event_time, &mut buf)?,
                4 => timestamp(wire_type, &mut envelope.ingest_time, &mut buf)?,
                5 => envelope.producer = string(tag, wire_type, &mut buf)?,
                6 => envelope.trace_id = string(tag, wire_type, &mut buf)?,
                7 => envelope.user_id = string(tag, wire_type, &mut buf)?,
                8 => envelope.device_id = string(tag, wire_type, &mut buf)?,
                9 if !attributes => {
                    map_entry(&mut buf)?;
                }
                9 => {
                    let entry = map_entry(&mut buf)?;
                    sorted &= envelope
                        .attributes
                        .last()
                        .is_none_or(|last| last.0 < entry.0);
                    envelope.attributes.push(entry);
                }
                10 => envelope.content_type = string(tag, wire_type, &mut buf)?,
                11 => {
                    check_wire_type(WireType::LengthDelimited, wire_type)?;
                    envelope.payload = length_delimited(tag, &mut buf)?;
                }
                12 => envelope.history_id = string(tag, wire_type, &mut buf)?,
                _ => skip(wire_type, tag, &mut buf, RECURSION_LIMIT)?,
            }
        }
        if !sorted {
            // Stable, so among equal keys the wire order stays and the last one is kept.
            envelope.attributes.sort_by(|a, b| a.0.cmp(b.0));
            envelope.attributes.dedup_by(|later, kept| {
                let same = later.0 == kept.0;
                if same {
                    *kept = *later;
                }
                same
            });
        }
        Ok(envelope)
    }

    /// The envelope `buf` with its payload replaced: every payload field (11) left out, the
    /// other fields copied byte for byte, and `payload` appended. Prost reads it as the same
    /// envelope with that payload, and it costs a walk over the fields instead of a decode and
    /// an encode.
    pub fn replace_payload(buf: &[u8], payload: &[u8]) -> Result<Vec<u8>, ViewError> {
        let mut out = Vec::with_capacity(buf.len() + payload.len());
        let mut rest = buf;
        while rest.has_remaining() {
            let field = rest;
            let (tag, wire_type) = decode_key(&mut rest)?;
            if tag == 11 {
                check_wire_type(WireType::LengthDelimited, wire_type)?;
                length_delimited(tag, &mut rest)?;
                continue;
            }
            skip(wire_type, tag, &mut rest, RECURSION_LIMIT)?;
            out.extend_from_slice(&field[..field.len() - rest.len()]);
        }
        prost::encoding::bytes::encode(11, &payload.to_vec(), &mut out);
        Ok(out)
    }

    /// An owned copy.
    pub fn to_envelope(&self) -> Envelope {
        Envelope {
            event_id: self.event_id.to_owned(),
            event_name: self.event_name.to_owned(),
            event_time: self.event_time,
            ingest_time: self.ingest_time,
            producer: self.producer.to_owned(),
            trace_id: self.trace_id.to_owned(),
            user_id: self.user_id.to_owned(),
            device_id: self.device_id.to_owned(),
            attributes: self
                .attributes
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
            content_type: self.content_type.to_owned(),
            payload: self.payload.to_vec(),
            history_id: self.history_id.to_owned(),
        }
    }
}

impl<'a> From<&'a Envelope> for EnvelopeRef<'a> {
    fn from(e: &'a Envelope) -> Self {
        EnvelopeRef {
            event_id: &e.event_id,
            event_name: &e.event_name,
            event_time: e.event_time,
            ingest_time: e.ingest_time,
            producer: &e.producer,
            trace_id: &e.trace_id,
            user_id: &e.user_id,
            device_id: &e.device_id,
            attributes: e
                .attributes
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            content_type: &e.content_type,
            payload: &e.payload,
            history_id: &e.history_id,
        }
    }
}

fn length_delimited<'a>(tag: u32, buf: &mut &'a [u8]) -> Result<&'a [u8], ViewError> {
    let len = decode_varint(buf)?;
    let len = usize::try_from(len)
        .ok()
        .filter(|len| *len <= buf.len())
        .ok_or(ViewError::Truncated(tag))?;
    let (value, rest) = buf.split_at(len);
    *buf = rest;
    Ok(value)
}

fn string<'a>(tag: u32, wire_type: WireType, buf: &mut &'a [u8]) -> Result<&'a str, ViewError> {
    check_wire_type(WireType::LengthDelimited, wire_type)?;
    std::str::from_utf8(length_delimited(tag, buf)?).map_err(|_| ViewError::NotUtf8(tag))
}

fn timestamp(
    wire_type: WireType,
    value: &mut Option<Timestamp>,
    buf: &mut &[u8],
) -> Result<(), ViewError> {
    // Prost's own merge: timestamps neither allocate nor borrow.
    prost::encoding::message::merge(
        wire_type,
        value.get_or_insert_with(Timestamp::default),
        buf,
        DecodeContext::default(),
    )?;
    Ok(())
}

/// One `attributes` entry. Like prost, this reads a length whatever the wire type says.
fn map_entry<'a>(buf: &mut &'a [u8]) -> Result<(&'a str, &'a str), ViewError> {
    let mut entry = length_delimited(9, buf)?;
    let (mut key, mut value) = ("", "");
    while entry.has_remaining() {
        let (tag, wire_type) = decode_key(&mut entry)?;
        match tag {
            1 => key = string(9, wire_type, &mut entry)?,
            2 => value = string(9, wire_type, &mut entry)?,
            _ => skip(wire_type, tag, &mut entry, RECURSION_LIMIT - 1)?,
        }
    }
    Ok((key, value))
}

/// Skips an unknown field as prost does, with the same limit on nested groups.
fn skip(wire_type: WireType, tag: u32, buf: &mut &[u8], depth: u32) -> Result<(), ViewError> {
    if depth == 0 {
        return Err(ViewError::TooDeep);
    }
    let len = match wire_type {
        WireType::Varint => {
            decode_varint(buf)?;
            0
        }
        WireType::ThirtyTwoBit => 4,
        WireType::SixtyFourBit => 8,
        WireType::LengthDelimited => decode_varint(buf)?,
        WireType::StartGroup => loop {
            let (inner_tag, inner_wire_type) = decode_key(buf)?;
            if inner_wire_type == WireType::EndGroup {
                if inner_tag != tag {
                    return Err(ViewError::UnexpectedEndGroup);
                }
                break 0;
            }
            skip(inner_wire_type, inner_tag, buf, depth - 1)?;
        },
        WireType::EndGroup => return Err(ViewError::UnexpectedEndGroup),
    };
    let len = usize::try_from(len)
        .ok()
        .filter(|len| *len <= buf.len())
        .ok_or(ViewError::Truncated(tag))?;
    buf.advance(len);
    Ok(())
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// Envelopes and wire oddities from a seeded generator, so a failure repeats.
    struct Gen(StdRng);

    impl Gen {
        fn new(seed: u64) -> Gen {
            Gen(StdRng::seed_from_u64(seed))
        }

        fn next(&mut self) -> u64 {
            self.0.random()
        }

        fn below(&mut self, n: u64) -> u64 {
            self.0.random_range(0..n)
        }

        fn text(&mut self) -> String {
            const PIECES: [&str; 6] = ["a", "order", "é", "\u{1F600}", "\"\\\n", ""];
            (0..self.below(4))
                .map(|_| PIECES[self.below(PIECES.len() as u64) as usize])
                .collect()
        }

        fn timestamp(&mut self) -> Option<Timestamp> {
            (self.below(4) > 0).then(|| Timestamp {
                seconds: self.next() as i64 >> self.below(64),
                nanos: self.next() as i32 >> self.below(32),
            })
        }

        fn envelope(&mut self) -> Envelope {
            Envelope {
                event_id: self.text(),
                event_name: self.text(),
                event_time: self.timestamp(),
                ingest_time: self.timestamp(),
                producer: self.text(),
                trace_id: self.text(),
                user_id: self.text(),
                device_id: self.text(),
                attributes: (0..self.below(4))
                    .map(|_| (self.text(), self.text()))
                    .collect(),
                content_type: self.text(),
                payload: (0..self.below(40)).map(|_| self.next() as u8).collect(),
                history_id: if self.below(4) == 0 {
                    self.text()
                } else {
                    String::new()
                },
            }
        }

        /// Wire-level oddities prost must cope with: unknown fields of every wire type,
        /// repeated map keys, strings that are not UTF-8, wrong wire types.
        fn oddity(&mut self, out: &mut Vec<u8>) {
            let key = |tag: u64, wire: u64, out: &mut Vec<u8>| {
                prost::encoding::encode_varint(tag << 3 | wire, out);
            };
            match self.below(8) {
                0 => {
                    key(20 + self.below(100), 0, out);
                    prost::encoding::encode_varint(self.next(), out);
                }
                1 => {
                    key(12, 1, out);
                    out.extend_from_slice(&self.next().to_le_bytes());
                }
                2 => {
                    key(13, 5, out);
                    out.extend_from_slice(&(self.next() as u32).to_le_bytes());
                }
                3 => {
                    let tag = 14 + self.below(3);
                    key(tag, 3, out);
                    key(1, 0, out);
                    out.push(7);
                    key(tag + self.below(2), 4, out);
                }
                4 => {
                    let entry = |k: &[u8], v: &[u8]| {
                        let mut e = vec![0x0a, k.len() as u8];
                        e.extend_from_slice(k);
                        e.extend_from_slice(&[0x12, v.len() as u8]);
                        e.extend_from_slice(v);
                        e
                    };
                    for v in [&b"first"[..], b"second"] {
                        let e = entry(b"dup", v);
                        key(9, 2, out);
                        out.push(e.len() as u8);
                        out.extend_from_slice(&e);
                    }
                }
                5 => {
                    key(1 + self.below(10), 2, out);
                    out.extend_from_slice(&[2, 0xc3, 0x28]);
                }
                6 => key(1 + self.below(11), self.below(6), out),
                _ => {
                    key(9, 0, out);
                    out.extend_from_slice(&[4, 0x0a, 0x01, b'k', 0x10]);
                }
            }
        }
    }

    fn agree(bytes: &[u8], what: &str) {
        let ours = EnvelopeRef::decode(bytes).map(|v| v.to_envelope());
        let prost = Envelope::decode(bytes);
        match (&ours, &prost) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{what}: {bytes:?}"),
            (Err(_), Err(_)) => {}
            _ => panic!("{what}: view {ours:?}, prost {prost:?} for {bytes:?}"),
        }
        // The engine's reader, both ways: what it routes, the lake can write, and the reverse.
        let head = EnvelopeHead::read(bytes);
        match (&head, &prost) {
            (Ok(head), Ok(full)) => assert_eq!(
                (head.event_id, head.event_name),
                (full.event_id.as_str(), full.event_name.as_str()),
                "{what}: {bytes:?}"
            ),
            (Err(_), Err(_)) => {}
            _ => panic!("{what}: head {head:?}, prost {prost:?} for {bytes:?}"),
        }
    }

    /// Unknown groups may nest as deep as prost allows and no deeper: a record cannot make a
    /// reader recurse without bound.
    #[test]
    fn nesting_is_limited_as_prost_limits_it() {
        let nested = |depth: usize| {
            let mut bytes = vec![0x12, 0x01, b'a'];
            // Field 20, wire type 3 (start group) / 4 (end group).
            bytes.extend(std::iter::repeat_n([0xa3, 0x01], depth).flatten());
            bytes.extend(std::iter::repeat_n([0xa4, 0x01], depth).flatten());
            bytes
        };
        for depth in [1, 50, 99, 100, 101, 10_000] {
            agree(&nested(depth), &format!("groups nested {depth} deep"));
        }
        assert!(EnvelopeHead::read(&nested(99)).is_ok());
        assert!(matches!(
            EnvelopeHead::read(&nested(10_000)),
            Err(ViewError::TooDeep)
        ));
    }

    #[test]
    fn reads_what_prost_reads_and_rejects_what_prost_rejects() {
        let mut g = Gen::new(0x2545_f491_4f6c_dd1d);
        let mut decoded = 0;
        for case in 0..30_000 {
            let mut bytes = g.envelope().encode_to_vec();
            match case % 5 {
                // Two messages back to back merge: later fields win, timestamps merge.
                0 => bytes.extend(g.envelope().encode_to_vec()),
                1 => {
                    for _ in 0..=g.below(3) {
                        g.oddity(&mut bytes);
                    }
                }
                2 if !bytes.is_empty() => {
                    let at = g.below(bytes.len() as u64) as usize;
                    bytes[at] ^= 1 << g.below(8);
                }
                3 => bytes.truncate(g.below(bytes.len() as u64 + 1) as usize),
                _ => {}
            }
            agree(&bytes, &format!("case {case}"));
            decoded += usize::from(Envelope::decode(bytes.as_slice()).is_ok());
        }
        assert!(
            (12_000..29_000).contains(&decoded),
            "{decoded} of 30000 cases decode: the generator must produce both kinds"
        );
    }

    #[test]
    fn attributes_keep_the_last_value_of_a_key_in_key_order() {
        let mut bytes = Vec::new();
        for (k, v) in [("b", "1"), ("a", "2"), ("b", "3")] {
            let entry = [&[0x0a, 1][..], k.as_bytes(), &[0x12, 1], v.as_bytes()].concat();
            bytes.extend_from_slice(&[0x4a, entry.len() as u8]);
            bytes.extend_from_slice(&entry);
        }
        let view = EnvelopeRef::decode(&bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(view.attributes, vec![("a", "2"), ("b", "3")]);
    }

    /// A replaced payload reads back as the same envelope with the new payload, whatever the
    /// field order and however often the payload field repeats.
    #[test]
    fn a_replaced_payload_reads_as_the_same_envelope() {
        let mut generator = Gen::new(11);
        for case in 0..500 {
            let envelope = generator.envelope();
            let mut bytes = envelope.encode_to_vec();
            if case % 3 == 0 {
                // A second payload field before the rest: both must go.
                let mut twice = Vec::new();
                prost::encoding::bytes::encode(11, &b"OLD-PAYLOAD-7f3a".to_vec(), &mut twice);
                twice.extend_from_slice(&bytes);
                bytes = twice;
            }
            let replaced = EnvelopeRef::replace_payload(&bytes, b"new payload").expect("replaces");
            let decoded = Envelope::decode(replaced.as_slice()).expect("decodes");
            assert_eq!(
                decoded,
                Envelope {
                    payload: b"new payload".to_vec(),
                    ..envelope.clone()
                }
            );
            assert!(
                !replaced.windows(16).any(|w| w == b"OLD-PAYLOAD-7f3a"),
                "an old payload field is left"
            );
        }
    }

    #[test]
    fn a_view_of_an_owned_envelope_reads_the_same() {
        let mut g = Gen::new(7);
        for _ in 0..100 {
            let envelope = g.envelope();
            let bytes = envelope.encode_to_vec();
            let decoded = EnvelopeRef::decode(&bytes).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(decoded, EnvelopeRef::from(&envelope));
        }
    }
}
