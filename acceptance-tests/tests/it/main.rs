//! Terraform acceptance tests (TF_ACC=1): every resource through create → empty plan → import →
//! in-place update → drift → destroy, on every Terraform in FANNER_TERRAFORM_BINS; history on
//! demand (`history`) too, whose `history_arrives_in_the_stream` needs the hydration data plane.

mod access;
mod adoption;
mod examples;
mod expiry;
mod gatekeeping;
mod history;
mod resources;

/// An RFC 3339 instant `days` from now, at whole seconds.
pub fn days_ahead(days: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::days(days))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}
