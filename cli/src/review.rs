//! `fanner review`: what needs a reviewer's attention, and the dated review document.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use api::{AccessReview, ReviewedGrant};

use crate::commands::client;
use crate::output::{self, opt_time, table, time};
use crate::{Connection, ReportFormat};

/// Grants that expire within `days`, have expired, or went unused for `days`.
pub async fn list(conn: &Connection, days: u32) -> anyhow::Result<ExitCode> {
    let review = client(conn)?.review(days).await?;
    let attention: Vec<&ReviewedGrant> = review
        .grants
        .iter()
        .filter(|g| g.attention.is_some())
        .collect();
    if conn.json {
        output::json(&attention)?;
    } else if attention.is_empty() {
        println!("Nothing needs attention within {days} days.");
    } else {
        table(
            &[
                "attention",
                "event",
                "grantee",
                "reason",
                "granted by",
                "age",
                "expires",
            ],
            attention.iter().map(|g| {
                vec![
                    g.attention.map(|a| a.as_str()).unwrap_or("").to_owned(),
                    g.grant.event.clone(),
                    g.grant.grantee.clone(),
                    g.grant.reason.clone(),
                    g.grant.granted_by.clone(),
                    format!("{}d", g.age_days),
                    opt_time(&g.grant.expires_at),
                ]
            }),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The review document in `format`, on stdout or in `out`.
pub async fn report(
    conn: &Connection,
    days: u32,
    format: ReportFormat,
    out: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let review = client(conn)?.review(days).await?;
    let document = match format {
        ReportFormat::Json => serde_json::to_string_pretty(&review)? + "\n",
        ReportFormat::Html => control_plane::report::html(&review)?,
        ReportFormat::Csv => csv_report(&review)?,
    };
    match out {
        Some(path) => std::fs::write(path, document)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => print!("{document}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// One row per grant; every row carries the review's date and audit head, so any extract of
/// the file still names the evidence it came from.
fn csv_report(review: &AccessReview) -> anyhow::Result<String> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record([
        "event",
        "grantee",
        "reason",
        "granted_by",
        "granted_at",
        "age_days",
        "expires_at",
        "status",
        "streams",
        "attention",
        "generated_at",
        "audit_head",
    ])?;
    for g in &review.grants {
        writer.write_record([
            g.grant.event.clone(),
            g.grant.grantee.clone(),
            g.grant.reason.clone(),
            g.grant.granted_by.clone(),
            time(&g.grant.created_at),
            g.age_days.to_string(),
            g.grant.expires_at.as_ref().map(time).unwrap_or_default(),
            serde_json::to_value(g.grant.status)?
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            g.streams.join(" "),
            g.attention.map(|a| a.as_str()).unwrap_or("").to_owned(),
            time(&review.generated_at),
            review.audit_head.clone(),
        ])?;
    }
    Ok(String::from_utf8(writer.into_inner()?)?)
}
