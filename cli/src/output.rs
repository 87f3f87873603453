//! Human output (aligned tables) and machine output (`--json`) for every command.

use comfy_table::{ContentArrangement, Table, presets};
use serde::Serialize;

pub fn json(value: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub fn table(header: &[&str], rows: impl IntoIterator<Item = Vec<String>>) {
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.iter().map(|h| h.to_uppercase()));
    for row in rows {
        table.add_row(row);
    }
    for line in table.lines() {
        println!("{}", line.trim_end());
    }
}

/// One `key: value` line per field, for a single object.
pub fn fields(pairs: &[(&str, String)]) {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (key, value) in pairs {
        println!("{key:<width$}  {value}");
    }
}

pub fn time(at: &chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub fn opt_time(at: &Option<chrono::DateTime<chrono::Utc>>) -> String {
    at.as_ref().map(time).unwrap_or_else(|| "-".to_owned())
}
