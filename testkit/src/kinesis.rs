//! Fault injection for Kinesis clients: emulators never throttle or fail a single record.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aws_sdk_kinesis::config::interceptors::{
    BeforeSerializationInterceptorContextMut, FinalizerInterceptorContextMut,
};
use aws_sdk_kinesis::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_kinesis::error::BoxError;
use aws_sdk_kinesis::operation::put_records::{PutRecordsInput, PutRecordsOutput};
use aws_sdk_kinesis::types::PutRecordsResultEntry;
use aws_smithy_runtime_api::client::interceptors::context::Output;
use aws_smithy_types::config_bag::{Storable, StoreReplace};

/// The error code the injected failures carry.
pub const INJECTED_CODE: &str = "ProvisionedThroughputExceededException";

/// Fails chosen `PutRecords` entries as throttled, the way Kinesis does under load: the entries
/// are taken out of the request (so the server never stores them) and put back into the response
/// as failures at their original positions. Every call's partition keys, as the client sent them,
/// are recorded. When every entry of a call fails, the server's answer to the emptied request,
/// whatever it is, is replaced by an all-failed response.
#[derive(Clone, Debug, Default)]
pub struct PutRecordsFaults {
    state: Arc<Mutex<FaultState>>,
}

#[derive(Debug, Default)]
struct FaultState {
    /// Partition key → how many more times its entry fails.
    remaining: HashMap<String, u32>,
    calls: Vec<Vec<String>>,
}

/// Positions taken out of one call's request, carried to its response.
#[derive(Clone, Debug)]
struct Removed {
    positions: Vec<usize>,
    total: usize,
}

impl Storable for Removed {
    type Storer = StoreReplace<Self>;
}

impl PutRecordsFaults {
    pub fn new() -> Self {
        Self::default()
    }

    /// The entry with `partition_key` fails the next `times` times it is sent.
    pub fn fail(&self, partition_key: &str, times: u32) {
        self.lock()
            .remaining
            .insert(partition_key.to_owned(), times);
    }

    /// The partition keys of every `PutRecords` call so far, in the order sent.
    pub fn calls(&self) -> Vec<Vec<String>> {
        self.lock().calls.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FaultState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Intercept for PutRecordsFaults {
    fn name(&self) -> &'static str {
        "PutRecordsFaults"
    }

    fn modify_before_serialization(
        &self,
        context: &mut BeforeSerializationInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Some(input) = context.input_mut().downcast_mut::<PutRecordsInput>() else {
            return Ok(());
        };
        let Some(records) = input.records.as_mut() else {
            return Ok(());
        };
        let keys: Vec<String> = records
            .iter()
            .map(|entry| entry.partition_key().unwrap_or_default().to_owned())
            .collect();
        let mut state = self.lock();
        state.calls.push(keys.clone());
        let mut positions = Vec::new();
        for (index, key) in keys.iter().enumerate() {
            if let Some(left) = state.remaining.get_mut(key)
                && *left > 0
            {
                *left -= 1;
                positions.push(index);
            }
        }
        drop(state);
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
        let Some(result) = context.output_or_error_mut() else {
            return Ok(());
        };
        if removed.positions.len() == removed.total {
            let output = PutRecordsOutput::builder()
                .set_records(Some(
                    (0..removed.total).map(|_| injected_failure()).collect(),
                ))
                .failed_record_count(i32::try_from(removed.total).unwrap_or(i32::MAX))
                .build()?;
            *result = Ok(Output::erase(output));
            return Ok(());
        }
        let Ok(output) = result else {
            return Ok(());
        };
        let Some(output) = output.downcast_mut::<PutRecordsOutput>() else {
            return Ok(());
        };
        let mut written = std::mem::take(&mut output.records).into_iter();
        let mut entries = Vec::with_capacity(removed.total);
        for index in 0..removed.total {
            if removed.positions.contains(&index) {
                entries.push(injected_failure());
            } else if let Some(entry) = written.next() {
                entries.push(entry);
            }
        }
        output.records = entries;
        let failed = i32::try_from(removed.positions.len()).unwrap_or(i32::MAX);
        output.failed_record_count = Some(output.failed_record_count.unwrap_or(0) + failed);
        Ok(())
    }
}

fn injected_failure() -> PutRecordsResultEntry {
    PutRecordsResultEntry::builder()
        .error_code(INJECTED_CODE)
        .error_message("Rate exceeded for shard (injected by the test).")
        .build()
}
