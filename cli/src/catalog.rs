//! `fanner catalog push`: registers the events declared in protobuf sources, through the
//! `(fanner.v1.event)` message option, and stores each event's message descriptor, whose
//! `(fanner.v1.field).pii` marks the control plane turns into default redactions.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use api::{Classification, CreateEvent, SetEventSchema, UpdateEvent};
use base64::Engine as _;
use prost_reflect::{DescriptorPool, DynamicMessage, Value};

use crate::Connection;
use crate::commands::client;
use crate::output::{self, table};

/// One event declared in a descriptor set.
#[derive(Debug, PartialEq, serde::Serialize)]
pub struct Declared {
    pub message: String,
    pub name: String,
    pub owner: Option<String>,
    pub classification: Classification,
    pub description: String,
    /// The fields the message marks PII, by JSON name.
    pub pii_fields: Vec<String>,
    /// The message's own FileDescriptorSet (its file and what that imports).
    #[serde(skip)]
    pub descriptor_set: Vec<u8>,
}

const EVENT_OPTION: &str = "fanner.v1.event";

/// Every message of the FileDescriptorSet `bytes` that carries the event option.
pub fn declared_events(bytes: &[u8]) -> anyhow::Result<Vec<Declared>> {
    let pool = DescriptorPool::decode(bytes).context(
        "not a valid FileDescriptorSet (build one with `protoc --include_imports --descriptor_set_out=FILE`)",
    )?;
    let Some(extension) = pool.get_extension_by_name(EVENT_OPTION) else {
        bail!(
            "the descriptor set does not include fanner/v1/catalog.proto: build it with --include_imports"
        );
    };
    let mut declared = Vec::new();
    for message in pool.all_messages() {
        let options = message.options();
        if !options.has_extension(&extension) {
            continue;
        }
        let Value::Message(option) = options.get_extension(&extension).into_owned() else {
            bail!(
                "message {} has a malformed {EVENT_OPTION} option",
                message.full_name()
            );
        };
        let schema = proto::PayloadSchema::new(message.clone());
        declared.push(Declared {
            pii_fields: schema.pii_fields(),
            descriptor_set: schema.descriptor_set(),
            ..parse_option(message.full_name(), &option)?
        });
    }
    Ok(declared)
}

fn parse_option(message: &str, option: &DynamicMessage) -> anyhow::Result<Declared> {
    let text = |field: &str| -> String {
        option
            .get_field_by_name(field)
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    let name = text("name");
    api::rules::check_name("event", &name)
        .map_err(|e| anyhow::anyhow!("message {message}: {e}"))?;
    let classification = match option
        .get_field_by_name("classification")
        .and_then(|v| v.as_enum_number())
        .and_then(|n| proto::Classification::try_from(n).ok())
    {
        Some(proto::Classification::Public) => Classification::Public,
        Some(proto::Classification::Internal) => Classification::Internal,
        Some(proto::Classification::Pii) => Classification::Pii,
        Some(proto::Classification::Restricted) => Classification::Restricted,
        Some(proto::Classification::Unspecified) | None => {
            bail!(
                "message {message}: event {name:?} needs a classification (public, internal, pii or restricted)"
            )
        }
    };
    let owner = Some(text("owner")).filter(|o| !o.is_empty());
    Ok(Declared {
        message: message.to_owned(),
        name,
        owner,
        classification,
        description: text("description"),
        pii_fields: Vec::new(),
        descriptor_set: Vec::new(),
    })
}

pub async fn push(conn: &Connection, file: &Path) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let declared = declared_events(&bytes)?;
    if declared.is_empty() {
        bail!(
            "{} declares no event: no message carries the ({EVENT_OPTION}) option",
            file.display()
        );
    }
    let client = client(conn)?;
    let mut results = Vec::new();
    for event in declared {
        let existing = client.get_event(&event.name).await?;
        let stored_digest = existing
            .as_ref()
            .and_then(|e| e.schema.as_ref())
            .map(|s| s.digest.clone());
        let outcome = match existing {
            None => {
                client
                    .create_event(&CreateEvent {
                        name: event.name.clone(),
                        classification: event.classification,
                        description: event.description.clone(),
                        owner: event.owner.clone(),
                    })
                    .await?;
                "created".to_owned()
            }
            Some(existing) => {
                if let Some(owner) = &event.owner
                    && *owner != existing.owner
                {
                    bail!(
                        "event {:?} is owned by {:?}, but {} declares owner {owner:?}",
                        event.name,
                        existing.owner,
                        event.message
                    );
                }
                if existing.classification == event.classification
                    && existing.description == event.description
                {
                    "unchanged".to_owned()
                } else {
                    client
                        .update_event(
                            &event.name,
                            &UpdateEvent {
                                classification: event.classification,
                                description: event.description.clone(),
                                revision: Some(existing.revision),
                            },
                        )
                        .await?;
                    "updated".to_owned()
                }
            }
        };
        // The control plane stores a changed schema and ignores an unchanged one.
        let stored = client
            .set_event_schema(
                &event.name,
                &SetEventSchema {
                    message: event.message.clone(),
                    descriptor_set: base64::engine::general_purpose::STANDARD
                        .encode(&event.descriptor_set),
                },
            )
            .await?
            .schema
            .map(|s| s.digest);
        let outcome = if outcome == "unchanged" && stored != stored_digest {
            "updated".to_owned()
        } else {
            outcome
        };
        results.push((event, outcome));
    }
    if conn.json {
        let rows: Vec<_> = results
            .iter()
            .map(|(event, outcome)| serde_json::json!({ "event": event, "result": outcome }))
            .collect();
        output::json(&rows)?;
    } else {
        table(
            &["event", "message", "classification", "pii fields", "result"],
            results.iter().map(|(e, outcome)| {
                vec![
                    e.name.clone(),
                    e.message.clone(),
                    e.classification.to_string(),
                    e.pii_fields.join(", "),
                    outcome.clone(),
                ]
            }),
        );
    }
    Ok(ExitCode::SUCCESS)
}
