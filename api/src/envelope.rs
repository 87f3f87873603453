//! How people see an envelope: the protobuf fields, with the payload as JSON when it is JSON.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, TimeZone, Utc};

use crate::EnvelopeView;

pub fn timestamp_to_utc(ts: &proto::Timestamp) -> Option<DateTime<Utc>> {
    let nanos = u32::try_from(ts.nanos).ok()?;
    Utc.timestamp_opt(ts.seconds, nanos).single()
}

pub fn utc_to_timestamp(at: DateTime<Utc>) -> proto::Timestamp {
    proto::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

impl From<&proto::Envelope> for EnvelopeView {
    fn from(envelope: &proto::Envelope) -> EnvelopeView {
        let json = serde_json::from_slice::<serde_json::Value>(&envelope.payload).ok();
        let payload_base64 = match json {
            Some(_) => None,
            None => Some(STANDARD.encode(&envelope.payload)),
        };
        EnvelopeView {
            event_id: envelope.event_id.clone(),
            event_name: envelope.event_name.clone(),
            event_time: envelope.event_time.as_ref().and_then(timestamp_to_utc),
            ingest_time: envelope.ingest_time.as_ref().and_then(timestamp_to_utc),
            producer: envelope.producer.clone(),
            trace_id: envelope.trace_id.clone(),
            user_id: envelope.user_id.clone(),
            device_id: envelope.device_id.clone(),
            attributes: envelope.attributes.clone(),
            content_type: envelope.content_type.clone(),
            payload: json,
            payload_base64,
            history_id: (!envelope.history_id.is_empty()).then(|| envelope.history_id.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_json_when_it_parses_else_base64() {
        let mut envelope = proto::Envelope {
            event_name: "a".to_owned(),
            payload: br#"{"plan":"pro"}"#.to_vec(),
            ..Default::default()
        };
        let view = EnvelopeView::from(&envelope);
        assert_eq!(view.payload, Some(serde_json::json!({"plan": "pro"})));
        assert_eq!(view.payload_base64, None);
        envelope.payload = vec![0xff, 0x00, 0x10];
        let view = EnvelopeView::from(&envelope);
        assert_eq!(
            (view.payload, view.payload_base64.as_deref()),
            (None, Some("/wAQ"))
        );
    }

    #[test]
    fn timestamps_round_trip() {
        let at = Utc
            .timestamp_opt(1_700_000_000, 123_456_789)
            .single()
            .expect("valid");
        assert_eq!(timestamp_to_utc(&utc_to_timestamp(at)), Some(at));
        assert_eq!(
            timestamp_to_utc(&proto::Timestamp {
                seconds: 0,
                nanos: -1
            }),
            None
        );
    }
}
