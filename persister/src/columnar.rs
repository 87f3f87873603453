//! Parquet lake objects: one row per envelope, one column per envelope field, the payload as
//! bytes. Both directions live here, so the column layout is written down once.
//!
//! Written and read with the `parquet` crate's column API, not through Arrow: the Arrow crates
//! were a sixth of a cold release build. The files are the ones an Arrow writer makes of the
//! same table: the same Parquet schema, and the same `ARROW:schema` entry, so Arrow readers
//! (pyarrow, DataFusion, Spark's Arrow path) see `event_name` as a dictionary of strings,
//! times as microseconds in UTC, and attributes as a map — in objects written before and after.

use bytes::Bytes;
use parquet::basic::Compression;
use parquet::column::reader::get_typed_column_reader;
use parquet::data_type::{ByteArray, ByteArrayType, DataType, Int64Type};
use parquet::errors::ParquetError;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::reader::{FileReader, RowGroupReader};
use parquet::file::serialized_reader::SerializedFileReader;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use parquet::schema::types::ColumnPath;
use prost::Message;
use proto::EnvelopeRef;
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::encode::{EncodeError, ParquetCompression};

/// The file schema. Its leaves, in order, are [`Leaf`]'s variants.
const SCHEMA: &str = "message arrow_schema {
  required binary event_id (STRING);
  required binary event_name (STRING);
  optional int64 event_time (TIMESTAMP(MICROS,true));
  optional int64 ingest_time (TIMESTAMP(MICROS,true));
  required binary producer (STRING);
  required binary trace_id (STRING);
  required binary user_id (STRING);
  required binary device_id (STRING);
  required group attributes (MAP) {
    repeated group entries {
      required binary key (STRING);
      optional binary value (STRING);
    }
  }
  required binary content_type (STRING);
  required binary payload;
}";

/// The Arrow IPC encoding (base64) of the table's Arrow schema, as Arrow writers store it under
/// this key: `event_name` `Dictionary(Int32, Utf8)`, times `Timestamp(Microsecond, "UTC")`,
/// `attributes` `Map(entries: Struct(key: Utf8, value: Utf8?))`, `payload` `Binary`. The
/// schema is fixed, so is this; `tests/it/parquet.rs` checks pyarrow's reading of it.
const ARROW_SCHEMA_KEY: &str = "ARROW:schema";
const ARROW_SCHEMA: &str = include_str!("arrow_schema.b64");

/// The leaf columns, in schema order.
#[derive(Clone, Copy, Debug)]
enum Leaf {
    EventId,
    EventName,
    EventTime,
    IngestTime,
    Producer,
    TraceId,
    UserId,
    DeviceId,
    AttributeKey,
    AttributeValue,
    ContentType,
    Payload,
}

impl Leaf {
    const ALL: [Leaf; 12] = [
        Leaf::EventId,
        Leaf::EventName,
        Leaf::EventTime,
        Leaf::IngestTime,
        Leaf::Producer,
        Leaf::TraceId,
        Leaf::UserId,
        Leaf::DeviceId,
        Leaf::AttributeKey,
        Leaf::AttributeValue,
        Leaf::ContentType,
        Leaf::Payload,
    ];

    fn path(self) -> &'static str {
        match self {
            Leaf::EventId => "event_id",
            Leaf::EventName => "event_name",
            Leaf::EventTime => "event_time",
            Leaf::IngestTime => "ingest_time",
            Leaf::Producer => "producer",
            Leaf::TraceId => "trace_id",
            Leaf::UserId => "user_id",
            Leaf::DeviceId => "device_id",
            Leaf::AttributeKey => "attributes.entries.key",
            Leaf::AttributeValue => "attributes.entries.value",
            Leaf::ContentType => "content_type",
            Leaf::Payload => "payload",
        }
    }

    /// The text of a string column.
    fn text<'a>(self, e: &EnvelopeRef<'a>) -> &'a str {
        match self {
            Leaf::EventId => e.event_id,
            Leaf::EventName => e.event_name,
            Leaf::Producer => e.producer,
            Leaf::TraceId => e.trace_id,
            Leaf::UserId => e.user_id,
            Leaf::DeviceId => e.device_id,
            Leaf::ContentType => e.content_type,
            Leaf::EventTime
            | Leaf::IngestTime
            | Leaf::AttributeKey
            | Leaf::AttributeValue
            | Leaf::Payload => "",
        }
    }
}

fn micros(t: &Option<proto::Timestamp>) -> Option<i64> {
    let t = t.as_ref()?;
    t.seconds
        .checked_mul(1_000_000)?
        .checked_add(i64::from(t.nanos / 1_000))
}

/// Encodes envelopes, given as their protobuf bytes, as one Parquet object of one row group.
pub(crate) fn write(
    compression: ParquetCompression,
    envelopes: &[Bytes],
) -> Result<Vec<u8>, EncodeError> {
    let decoded = envelopes
        .iter()
        .map(|data| EnvelopeRef::decode(data).map(|e| (data, e)))
        .collect::<Result<Vec<_>, _>>()?;
    // Every value is a slice of the record it came from: no copy of any string or payload.
    let share = |data: &Bytes, part: &[u8]| ByteArray::from(data.slice_ref(part));
    let codec = match compression {
        ParquetCompression::None => Compression::UNCOMPRESSED,
        ParquetCompression::Snappy => Compression::SNAPPY,
    };
    // Unique per event: a dictionary is built and then abandoned, and min/max of payloads
    // help no reader.
    let unique = |name: &str| ColumnPath::from(name);
    let props = WriterProperties::builder()
        .set_compression(codec)
        .set_column_dictionary_enabled(unique("event_id"), false)
        .set_column_dictionary_enabled(unique("trace_id"), false)
        .set_column_dictionary_enabled(unique("payload"), false)
        .set_column_statistics_enabled(unique("payload"), EnabledStatistics::None)
        .set_key_value_metadata(Some(vec![KeyValue::new(
            ARROW_SCHEMA_KEY.to_owned(),
            ARROW_SCHEMA.trim().to_owned(),
        )]))
        .build();
    let payload_bytes: usize = decoded.iter().map(|(_, e)| e.payload.len()).sum();
    let mut out = Vec::with_capacity(payload_bytes / 2);
    let mut writer = SerializedFileWriter::new(
        &mut out,
        Arc::new(parse_message_type(SCHEMA)?),
        props.into(),
    )?;
    let mut row_group = writer.next_row_group()?;
    let mut leaves = Leaf::ALL.into_iter();
    let (mut values, mut times) = (Vec::new(), Vec::new());
    let (mut def, mut rep) = (Vec::new(), Vec::new());
    while let Some(mut column) = row_group.next_column()? {
        let leaf = leaves
            .next()
            .ok_or_else(|| ParquetError::General("more columns than the schema has".into()))?;
        values.clear();
        times.clear();
        def.clear();
        rep.clear();
        match leaf {
            Leaf::EventTime | Leaf::IngestTime => {
                for (_, e) in &decoded {
                    let at = match leaf {
                        Leaf::EventTime => micros(&e.event_time),
                        _ => micros(&e.ingest_time),
                    };
                    def.push(i16::from(at.is_some()));
                    times.extend(at);
                }
                column
                    .typed::<Int64Type>()
                    .write_batch(&times, Some(&def), None)?;
            }
            Leaf::AttributeKey | Leaf::AttributeValue => {
                // Levels of a map's leaf: an empty map is one level 0; each entry is defined
                // (1 for the key, 2 for a present value) and repeats (1) after the first.
                let defined = match leaf {
                    Leaf::AttributeKey => 1,
                    _ => 2,
                };
                for (data, e) in &decoded {
                    if e.attributes.is_empty() {
                        def.push(0);
                        rep.push(0);
                    }
                    for (i, (key, value)) in e.attributes.iter().enumerate() {
                        def.push(defined);
                        rep.push(i16::from(i > 0));
                        let text = match leaf {
                            Leaf::AttributeKey => key,
                            _ => value,
                        };
                        values.push(share(data, text.as_bytes()));
                    }
                }
                column
                    .typed::<ByteArrayType>()
                    .write_batch(&values, Some(&def), Some(&rep))?;
            }
            Leaf::Payload => {
                values.extend(decoded.iter().map(|(data, e)| share(data, e.payload)));
                column
                    .typed::<ByteArrayType>()
                    .write_batch(&values, None, None)?;
            }
            _ => {
                values.extend(
                    decoded
                        .iter()
                        .map(|(data, e)| share(data, leaf.text(e).as_bytes())),
                );
                column
                    .typed::<ByteArrayType>()
                    .write_batch(&values, None, None)?;
            }
        }
        column.close()?;
    }
    row_group.close()?;
    writer.close()?;
    Ok(out)
}

/// One leaf column of a row group, read whole: its non-null values and its levels.
struct Read<T> {
    values: Vec<T>,
    def: Vec<i16>,
    rep: Vec<i16>,
}

fn read_leaf<T: DataType>(
    row_group: &dyn RowGroupReader,
    index: usize,
    rows: usize,
) -> Result<Read<T::T>, ParquetError> {
    let mut reader = get_typed_column_reader::<T>(row_group.get_column_reader(index)?);
    let mut read = Read {
        values: Vec::with_capacity(rows),
        def: Vec::new(),
        rep: Vec::new(),
    };
    let mut records = 0;
    while records < rows {
        let (n, _, _) = reader.read_records(
            rows - records,
            Some(&mut read.def),
            Some(&mut read.rep),
            &mut read.values,
        )?;
        if n == 0 {
            return Err(ParquetError::EOF(format!(
                "column {index} ends after {records} of {rows} rows"
            )));
        }
        records += n;
    }
    Ok(read)
}

/// Reads a Parquet lake object back into envelopes (protobuf bytes), in row order. Columns are
/// found by name, so objects from any writer of this schema read the same.
pub(crate) fn read(body: &[u8]) -> Result<Vec<Bytes>, String> {
    read_envelopes(body).map_err(|e| e.to_string())
}

fn read_envelopes(body: &[u8]) -> Result<Vec<Bytes>, ParquetError> {
    let reader = SerializedFileReader::new(Bytes::copy_from_slice(body))?;
    let schema = reader.metadata().file_metadata().schema_descr_ptr();
    let mut index = [0; Leaf::ALL.len()];
    for (slot, leaf) in index.iter_mut().zip(Leaf::ALL) {
        *slot = (0..schema.num_columns())
            .find(|i| schema.column(*i).path().string() == leaf.path())
            .ok_or_else(|| ParquetError::General(format!("no column {:?}", leaf.path())))?;
    }
    let column = |leaf: Leaf| index[leaf as usize];
    let mut out = Vec::new();
    for g in 0..reader.num_row_groups() {
        let row_group = reader.get_row_group(g)?;
        let rows = usize::try_from(row_group.metadata().num_rows())
            .map_err(|e| ParquetError::General(e.to_string()))?;
        let text = |leaf: Leaf| read_leaf::<ByteArrayType>(&*row_group, column(leaf), rows);
        let time = |leaf: Leaf| read_leaf::<Int64Type>(&*row_group, column(leaf), rows);
        let required = |leaf: Leaf| -> Result<Vec<ByteArray>, ParquetError> {
            let read = text(leaf)?;
            if read.values.len() != rows {
                return Err(ParquetError::General(format!(
                    "column {:?} has {} values for {rows} rows",
                    leaf.path(),
                    read.values.len()
                )));
            }
            Ok(read.values)
        };
        let [
            event_id,
            event_name,
            producer,
            trace_id,
            user_id,
            device_id,
            content_type,
            payload,
        ] = [
            Leaf::EventId,
            Leaf::EventName,
            Leaf::Producer,
            Leaf::TraceId,
            Leaf::UserId,
            Leaf::DeviceId,
            Leaf::ContentType,
            Leaf::Payload,
        ]
        .map(required);
        let (event_id, event_name, producer, trace_id) =
            (event_id?, event_name?, producer?, trace_id?);
        let (user_id, device_id, content_type, payload) =
            (user_id?, device_id?, content_type?, payload?);
        let mut event_time = Times::new(time(Leaf::EventTime)?);
        let mut ingest_time = Times::new(time(Leaf::IngestTime)?);
        let mut attributes = Entries::new(text(Leaf::AttributeKey)?, text(Leaf::AttributeValue)?);
        for row in 0..rows {
            out.push(Bytes::from(
                proto::Envelope {
                    event_id: string(&event_id[row])?,
                    event_name: string(&event_name[row])?,
                    event_time: event_time.next()?,
                    ingest_time: ingest_time.next()?,
                    producer: string(&producer[row])?,
                    trace_id: string(&trace_id[row])?,
                    user_id: string(&user_id[row])?,
                    device_id: string(&device_id[row])?,
                    attributes: attributes.next()?,
                    content_type: string(&content_type[row])?,
                    payload: bytes(&payload[row])?.to_vec(),
                    history_id: String::new(),
                }
                .encode_to_vec(),
            ));
        }
    }
    Ok(out)
}

/// A value's bytes. The reader sets every value it returns, so an unset one is a broken file.
fn bytes(value: &ByteArray) -> Result<&[u8], ParquetError> {
    if *value == ByteArray::new() {
        return Err(ParquetError::General("a value is missing".into()));
    }
    Ok(value.data())
}

fn string(value: &ByteArray) -> Result<String, ParquetError> {
    Ok(std::str::from_utf8(bytes(value)?)?.to_owned())
}

/// An optional time column, row by row.
struct Times {
    read: Read<i64>,
    row: usize,
    value: usize,
}

impl Times {
    fn new(read: Read<i64>) -> Times {
        Times {
            read,
            row: 0,
            value: 0,
        }
    }

    fn next(&mut self) -> Result<Option<proto::Timestamp>, ParquetError> {
        let defined = *self
            .read
            .def
            .get(self.row)
            .ok_or_else(|| ParquetError::General("a time column ends early".into()))?;
        self.row += 1;
        if defined == 0 {
            return Ok(None);
        }
        let micros = *self
            .read
            .values
            .get(self.value)
            .ok_or_else(|| ParquetError::General("a time column ends early".into()))?;
        self.value += 1;
        Ok(Some(proto::Timestamp {
            seconds: micros.div_euclid(1_000_000),
            nanos: i32::try_from(micros.rem_euclid(1_000_000) * 1000).unwrap_or(0),
        }))
    }
}

/// The attribute map's key and value columns, a row's entries at a time.
struct Entries {
    keys: Read<ByteArray>,
    values: Read<ByteArray>,
    level: usize,
    key: usize,
    value: usize,
}

impl Entries {
    fn new(keys: Read<ByteArray>, values: Read<ByteArray>) -> Entries {
        Entries {
            keys,
            values,
            level: 0,
            key: 0,
            value: 0,
        }
    }

    fn next(&mut self) -> Result<BTreeMap<String, String>, ParquetError> {
        let ends = || ParquetError::General("the attributes column ends early".into());
        let mut map = BTreeMap::new();
        loop {
            let key_defined = *self.keys.def.get(self.level).ok_or_else(ends)?;
            let value_defined = *self.values.def.get(self.level).ok_or_else(ends)?;
            self.level += 1;
            if key_defined > 0 {
                let key = self.keys.values.get(self.key).ok_or_else(ends)?;
                self.key += 1;
                // A null value reads as the empty string, as the envelope has no null text.
                let value = if value_defined > 1 {
                    let value = self.values.values.get(self.value).ok_or_else(ends)?;
                    self.value += 1;
                    string(value)?
                } else {
                    String::new()
                };
                map.insert(string(key)?, value);
            }
            // The row goes on while the next level repeats it.
            if self.keys.rep.get(self.level).is_none_or(|r| *r == 0) {
                return Ok(map);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use parquet::file::reader::FileReader;

    use super::*;

    /// Envelopes of every shape a column can take: empty and missing values, no attributes and
    /// several, text that is not ASCII, a payload that is not text. Times are whole
    /// microseconds, the lake's precision.
    fn sample() -> Vec<proto::Envelope> {
        let at = |seconds: i64, micros: i32| {
            Some(proto::Timestamp {
                seconds,
                nanos: micros * 1000,
            })
        };
        let attributes = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        vec![
            proto::Envelope {
                event_id: "id-0".into(),
                event_name: "signup".into(),
                event_time: at(1_700_000_000, 123_456),
                ingest_time: None,
                producer: "growth".into(),
                trace_id: "t-0".into(),
                user_id: "u0".into(),
                device_id: String::new(),
                attributes: attributes(&[("k", "v"), ("a b", "")]),
                content_type: "application/json".into(),
                payload: br#"{"plan":"pro"}"#.to_vec(),
                history_id: String::new(),
            },
            proto::Envelope {
                event_id: "id-1".into(),
                event_name: "signup".into(),
                payload: b"\xff\x00binary".to_vec(),
                ..Default::default()
            },
            proto::Envelope {
                event_id: "id-2".into(),
                event_name: "你好 😊".into(),
                event_time: at(-62_135_596_800, 0),
                ingest_time: at(1_700_000_001, 999_999),
                producer: "é".into(),
                attributes: attributes(&[("x", "1"), ("y", "2"), ("z", "3")]),
                ..Default::default()
            },
            proto::Envelope {
                event_id: "id-3".into(),
                event_name: "signup".into(),
                ingest_time: at(0, 1),
                attributes: attributes(&[("only", "one")]),
                payload: b"null".to_vec(),
                ..Default::default()
            },
        ]
    }

    fn encoded(envelopes: &[proto::Envelope]) -> Vec<Bytes> {
        envelopes
            .iter()
            .map(|e| Bytes::from(e.encode_to_vec()))
            .collect()
    }

    fn decoded(records: &[Bytes]) -> Vec<proto::Envelope> {
        records
            .iter()
            .map(|b| proto::Envelope::decode(b.as_ref()).unwrap_or_else(|e| panic!("{e}")))
            .collect()
    }

    /// Written by `parquet::arrow::ArrowWriter` (parquet 60) from [`sample`], as the lake's
    /// Parquet objects were before this module.
    const ARROW_WRITTEN: &[u8] = include_bytes!("../tests/fixtures/arrow-writer.parquet");

    #[test]
    fn objects_an_arrow_writer_wrote_read_back_whole() {
        let back = read(ARROW_WRITTEN).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(decoded(&back), sample());
    }

    #[test]
    fn objects_are_laid_out_as_an_arrow_writer_lays_them_out() {
        let ours = write(ParquetCompression::Snappy, &encoded(&sample()))
            .unwrap_or_else(|e| panic!("{e}"));
        let layout = |body: &[u8]| {
            let reader = SerializedFileReader::new(Bytes::copy_from_slice(body))
                .unwrap_or_else(|e| panic!("{e}"));
            let file = reader.metadata().file_metadata();
            let mut schema = Vec::new();
            parquet::schema::printer::print_schema(&mut schema, file.schema());
            let metadata: Vec<_> = file
                .key_value_metadata()
                .into_iter()
                .flatten()
                .map(|kv| (kv.key.clone(), kv.value.clone()))
                .collect();
            let columns: Vec<_> = reader
                .metadata()
                .row_group(0)
                .columns()
                .iter()
                .map(|c| {
                    let encodings: Vec<_> = c.encodings().collect();
                    (
                        c.column_path().string(),
                        format!("{encodings:?}"),
                        c.compression(),
                        c.statistics().is_some(),
                    )
                })
                .collect();
            (
                String::from_utf8_lossy(&schema).into_owned(),
                metadata,
                columns,
            )
        };
        assert_eq!(layout(&ours), layout(ARROW_WRITTEN));
    }

    #[test]
    fn many_rows_cross_pages_and_read_back_in_order() {
        let envelopes: Vec<_> = (0..5_000u32)
            .map(|i| proto::Envelope {
                event_id: format!("id-{i}"),
                event_name: format!("event-{}", i % 7),
                event_time: (i % 3 != 0).then_some(proto::Timestamp {
                    seconds: 1_700_000_000 + i64::from(i),
                    nanos: 0,
                }),
                attributes: (0..i % 4)
                    .map(|k| (format!("k{k}"), i.to_string()))
                    .collect(),
                payload: vec![
                    u8::try_from(i % 251).unwrap_or(0);
                    usize::try_from(i % 300).unwrap_or(0)
                ],
                ..Default::default()
            })
            .collect();
        for compression in [ParquetCompression::None, ParquetCompression::Snappy] {
            let body = write(compression, &encoded(&envelopes)).unwrap_or_else(|e| panic!("{e}"));
            let back = read(&body).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(decoded(&back), envelopes, "{compression:?}");
        }
    }

    #[test]
    fn a_cut_or_foreign_object_is_an_error() {
        let body = write(ParquetCompression::Snappy, &encoded(&sample()))
            .unwrap_or_else(|e| panic!("{e}"));
        for len in (0..body.len()).step_by(7) {
            assert!(
                read(&body[..len]).is_err(),
                "cut at {len} of {}",
                body.len()
            );
        }
        let other = "message other { required binary event_id (STRING); }";
        let mut foreign = Vec::new();
        let mut writer = SerializedFileWriter::new(
            &mut foreign,
            Arc::new(parse_message_type(other).unwrap_or_else(|e| panic!("{e}"))),
            Default::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let written = writer.next_row_group().and_then(|mut group| {
            if let Some(mut column) = group.next_column()? {
                column.typed::<ByteArrayType>().write_batch(
                    &[ByteArray::from("id")],
                    None,
                    None,
                )?;
                column.close()?;
            }
            group.close()
        });
        written.unwrap_or_else(|e| panic!("{e}"));
        writer.close().unwrap_or_else(|e| panic!("{e}"));
        let error = read(&foreign).err().unwrap_or_default();
        assert!(error.contains("no column \"event_name\""), "{error}");
    }
}
