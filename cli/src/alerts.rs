//! `fanner alerts export`: alerting as code, rules over the metrics `fanner serve` exposes at
//! `/metrics`, checked by `promtool check rules` in the tests.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use crate::AlertFormat;

/// Prometheus alerting rules. Thresholds are defaults to edit in the exported file.
const PROMETHEUS_RULES: &str = r#"# Prometheus alerting rules for Fanner, from `fanner alerts export --format prometheus`.
groups:
  - name: fanner
    rules:
      - alert: FannerEventGap
        expr: max by (instance) (fanner_health_gaps) > 0
        labels:
          severity: warning
        annotations:
          summary: "Events have gone silent"
          description: "{{ $value }} events are silent for longer than their set or learned maximum; GET /v1/health/gaps names them."
      - alert: FannerConsumerLag
        expr: max by (instance, shard) (fanner_engine_ges_behind_milliseconds) > 60000
        for: 5m
        labels:
          severity: warning
        annotations:
          summary: "Fanner delivery is more than a minute behind the global event stream"
          description: "Shard {{ $labels.shard }} on {{ $labels.instance }} is {{ $value }} ms behind its newest record."
      - alert: FannerStreamFellBehind
        expr: sum by (instance, stream) (increase(fanner_engine_fell_behind_total[15m])) > 3
        labels:
          severity: warning
        annotations:
          summary: "A consumer stream keeps falling behind"
          description: "Stream {{ $labels.stream }} fell behind {{ $value }} times in 15 minutes: its writes are slow or failing."
      - alert: FannerStreamBroken
        expr: sum by (instance, stream) (increase(fanner_engine_broken_total[10m])) > 0
        labels:
          severity: critical
        annotations:
          summary: "A consumer stream is broken"
          description: "Stream {{ $labels.stream }} is missing or refuses writes; its subscriptions are marked failed until it recovers."
      - alert: FannerDeadLetters
        expr: sum by (instance, reason) (increase(fanner_engine_dead_letter_records_total[10m])) > 0
        labels:
          severity: warning
        annotations:
          summary: "Records are going to the dead-letter stream"
          description: "{{ $value }} records in 10 minutes were dead-lettered ({{ $labels.reason }})."
      - alert: FannerLakeStale
        expr: max by (instance, shard) (fanner_persister_freshness_seconds) > 900
        for: 5m
        labels:
          severity: warning
        annotations:
          summary: "The lake is more than 15 minutes behind"
          description: "Persister shard {{ $labels.shard }} last wrote data {{ $value }} s behind the stream."
      - alert: FannerShardsRefused
        expr: max by (instance, group) (fanner_shards_refused) > 0
        for: 5m
        labels:
          severity: critical
        annotations:
          summary: "Shards are refused: nobody reads them"
          description: "{{ $value }} shards of job {{ $labels.group }} on {{ $labels.instance }} have an unreadable checkpoint; the process log names them."
      - alert: FannerShardJobsFailing
        expr: sum by (instance, group) (increase(fanner_shard_job_failures_total[10m])) > 3
        labels:
          severity: warning
        annotations:
          summary: "Shard jobs keep failing"
          description: "Job {{ $labels.group }} on {{ $labels.instance }} failed {{ $value }} times in 10 minutes; the process log has the causes."
      - alert: FannerGrantsExpiring
        expr: max by (instance) (fanner_control_plane_grants_expiring) > 0
        labels:
          severity: info
        annotations:
          summary: "Grants expire within 7 days"
          description: "{{ $value }} active grants expire within 7 days; `fanner review` lists them."
"#;

pub fn export(format: AlertFormat, out: Option<&Path>) -> anyhow::Result<ExitCode> {
    let rules = match format {
        AlertFormat::Prometheus => PROMETHEUS_RULES,
    };
    match out {
        Some(path) => std::fs::write(path, rules)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => print!("{rules}"),
    }
    Ok(ExitCode::SUCCESS)
}
