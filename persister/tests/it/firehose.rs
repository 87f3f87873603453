//! The Firehose sink against moto, which writes one S3 object per PutRecordBatch call: every
//! record lands, batches respect the 500-record limit, and after a partial failure only the
//! failed entries are sent again.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use aws_sdk_firehose::config::interceptors::{
    BeforeSerializationInterceptorContextMut, FinalizerInterceptorContextMut,
};
use aws_sdk_firehose::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_firehose::error::BoxError;
use aws_sdk_firehose::operation::put_record_batch::{PutRecordBatchInput, PutRecordBatchOutput};
use aws_sdk_firehose::types::{
    DynamicPartitioningConfiguration, ExtendedS3DestinationConfiguration, ProcessingConfiguration,
    Processor, ProcessorParameter, ProcessorParameterName, ProcessorType,
    PutRecordBatchResponseEntry,
};
use aws_smithy_types::config_bag::{Storable, StoreReplace};
use chrono::Utc;
use persister::{Config, FirehoseSink, ObjectFormat, ObjectSink, Persister, S3Sink};

use crate::support::{Lab, Running, encoded, envelope, eventually, moto_bucket, read_lake};

/// The jq query of the delivery stream's dynamic partitioning, as in
/// `examples/terraform/firehose/`: the event name and the `yyyy-MM-dd:hh` hour of the event time.
const PARTITION_QUERY: &str =
    r#"{event_name: .event_name, hour: (.event_time[0:10] + ":" + .event_time[11:13])}"#;

/// Fails the chosen positions of the first PutRecordBatch call: they are taken out of the
/// request (so moto never stores them) and reported failed in the response.
#[derive(Clone, Debug, Default)]
struct FailFirstCall {
    state: Arc<Mutex<(Vec<usize>, usize)>>,
}

#[derive(Clone, Debug)]
struct Removed {
    positions: Vec<usize>,
    total: usize,
}

impl Storable for Removed {
    type Storer = StoreReplace<Self>;
}

impl FailFirstCall {
    fn new(positions: Vec<usize>) -> Self {
        FailFirstCall {
            state: Arc::new(Mutex::new((positions, 0))),
        }
    }

    /// Records per call, in order.
    fn calls(&self) -> usize {
        self.state.lock().map(|s| s.1).unwrap_or_default()
    }
}

impl Intercept for FailFirstCall {
    fn name(&self) -> &'static str {
        "FailFirstCall"
    }

    fn modify_before_serialization(
        &self,
        context: &mut BeforeSerializationInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Some(input) = context.input_mut().downcast_mut::<PutRecordBatchInput>() else {
            return Ok(());
        };
        let Some(records) = input.records.as_mut() else {
            return Ok(());
        };
        let mut state = self.state.lock().map_err(|e| e.to_string())?;
        state.1 += 1;
        if state.1 > 1 {
            return Ok(());
        }
        let positions = std::mem::take(&mut state.0);
        let total = records.len();
        let mut index = 0;
        records.retain(|_| {
            let keep = !positions.contains(&index);
            index += 1;
            keep
        });
        cfg.interceptor_state()
            .store_put(Removed { positions, total });
        Ok(())
    }

    fn modify_before_completion(
        &self,
        context: &mut FinalizerInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Some(removed) = cfg.load::<Removed>().cloned() else {
            return Ok(());
        };
        let Some(Ok(output)) = context.output_or_error_mut() else {
            return Ok(());
        };
        let Some(output) = output.downcast_mut::<PutRecordBatchOutput>() else {
            return Ok(());
        };
        let mut written = std::mem::take(&mut output.request_responses).into_iter();
        for index in 0..removed.total {
            if removed.positions.contains(&index) {
                output.request_responses.push(
                    PutRecordBatchResponseEntry::builder()
                        .error_code("ServiceUnavailableException")
                        .error_message("Slow down (injected by the test).")
                        .build(),
                );
            } else if let Some(entry) = written.next() {
                output.request_responses.push(entry);
            }
        }
        output.failed_put_count += i32::try_from(removed.positions.len())?;
        Ok(())
    }
}

#[tokio::test]
async fn firehose_sink_delivers_every_record_and_retries_only_failed_entries() -> Result<()> {
    let test = "firehose_sink_delivers_every_record_and_retries_only_failed_entries";
    let Some(moto) = testkit::moto::shared(test) else {
        return Ok(());
    };
    let bucket = testkit::unique_name("firehose");
    let lake = S3Sink::new(moto_bucket(moto, &bucket).await?);
    let faults = FailFirstCall::new(vec![3, 7, 499]);
    let sdk = moto.sdk_config().await;
    let client = aws_sdk_firehose::Client::from_conf(
        aws_sdk_firehose::config::Builder::from(&sdk)
            .interceptor(faults.clone())
            .build(),
    );
    let delivery_stream = testkit::unique_name("lake");
    let processor = Processor::builder()
        .r#type(ProcessorType::MetadataExtraction)
        .parameters(
            ProcessorParameter::builder()
                .parameter_name(ProcessorParameterName::MetadataExtractionQuery)
                .parameter_value(PARTITION_QUERY)
                .build()?,
        )
        .parameters(
            ProcessorParameter::builder()
                .parameter_name(ProcessorParameterName::JsonParsingEngine)
                .parameter_value("JQ-1.6")
                .build()?,
        )
        .build()?;
    client
        .create_delivery_stream()
        .delivery_stream_name(&delivery_stream)
        .extended_s3_destination_configuration(
            ExtendedS3DestinationConfiguration::builder()
                .role_arn("arn:aws:iam::123456789012:role/firehose-lake")
                .bucket_arn(format!("arn:aws:s3:::{bucket}"))
                .prefix("events/!{partitionKeyFromQuery:event_name}/!{partitionKeyFromQuery:hour}/")
                .error_output_prefix("events/_errors/firehose/!{firehose:error-output-type}/")
                .dynamic_partitioning_configuration(
                    DynamicPartitioningConfiguration::builder()
                        .enabled(true)
                        .build(),
                )
                .processing_configuration(
                    ProcessingConfiguration::builder()
                        .enabled(true)
                        .processors(processor)
                        .build(),
                )
                .build()?,
        )
        .send()
        .await?;

    let lab = Lab::new(1).await?;
    const EVENTS: usize = 1200;
    let now = Utc::now();
    let records = (0..EVENTS)
        .map(|i| {
            encoded(&envelope(
                &format!("f{i:05}"),
                "orders.created",
                Some(now),
                b"{}",
            ))
        })
        .collect();
    lab.publish(records).await?;
    let config = Config {
        format: ObjectFormat::Ndjson,
        max_object_age_ms: 300,
        discovery_interval_ms: 50,
        owner: Some("p1".into()),
        ..Config::default()
    };
    let sink: Arc<dyn ObjectSink> = Arc::new(FirehoseSink::new(client, &delivery_stream));
    let running = Running::start(Persister::new(
        &config,
        lab.streams(),
        lab.coordinator(),
        sink,
    )?);
    let stats = running.stats.clone();
    eventually(Duration::from_secs(30), "every event sent", || {
        let stats = stats.clone();
        async move { Ok(stats.events_written() as usize >= EVENTS) }
    })
    .await?;
    running.stop().await?;

    let lines = read_lake(&lake, "events/").await?;
    let mut per_object: BTreeMap<&str, usize> = BTreeMap::new();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for line in &lines {
        *per_object.entry(&line.key).or_default() += 1;
        *counts
            .entry(line.json["event_id"].as_str().context("event_id")?)
            .or_default() += 1;
    }
    ensure!(
        counts.len() == EVENTS,
        "{} distinct events landed",
        counts.len()
    );
    ensure!(counts.values().all(|n| *n == 1), "an event landed twice");
    // moto writes one object per call: batches of at most 500, plus the retry of exactly the
    // three failed entries.
    let mut sizes: Vec<usize> = per_object.values().copied().collect();
    sizes.sort_unstable();
    ensure!(sizes.iter().all(|n| *n <= 500), "{sizes:?}");
    ensure!(
        sizes.contains(&3),
        "no call carried just the 3 failed entries: {sizes:?}"
    );
    ensure!(
        faults.calls() == per_object.len(),
        "{} calls, {} objects",
        faults.calls(),
        per_object.len()
    );
    Ok(())
}

/// The documented Terraform configuration is the one tested above, and `terraform fmt`-clean.
#[test]
fn terraform_example_matches_the_tested_configuration() -> Result<()> {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/terraform/firehose");
    let main = std::fs::read_to_string(dir.join("main.tf"))?;
    ensure!(
        main.contains(&PARTITION_QUERY.replace('"', "\\\"")),
        "main.tf's MetadataExtractionQuery differs from the tested one"
    );
    ensure!(main.contains(
        r#"prefix              = "${var.base_prefix}/!{partitionKeyFromQuery:event_name}/!{partitionKeyFromQuery:hour}/""#
    ));
    let Some(terraform) = std::env::var("FANNER_TERRAFORM_BINS")
        .ok()
        .and_then(|bins| bins.split(':').next_back().map(str::to_owned))
    else {
        eprintln!(
            "terraform fmt check skipped: set FANNER_TERRAFORM_BINS (scripts/setup-tools prints it)"
        );
        return Ok(());
    };
    let config = tempfile::NamedTempFile::new()?;
    let output = std::process::Command::new(&terraform)
        .args(["fmt", "-check", "-diff"])
        .arg(&dir)
        .env("TF_CLI_CONFIG_FILE", config.path())
        .env("CHECKPOINT_DISABLE", "1")
        .output()?;
    ensure!(
        output.status.success(),
        "terraform fmt -check failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}
