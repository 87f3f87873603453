//! Diagnostics: every failure reaches the user as one, phrased so they know what to do.

use api::ClientError;

use crate::tfplugin6::{AttributePath, Diagnostic, attribute_path, diagnostic::Severity};

#[derive(Debug, Default)]
pub struct Diags(pub Vec<Diagnostic>);

impl Diags {
    pub fn error(&mut self, summary: impl Into<String>, detail: impl Into<String>) {
        self.push(Severity::Error, summary.into(), detail.into(), None);
    }

    pub fn error_at(
        &mut self,
        attribute: &str,
        summary: impl Into<String>,
        detail: impl Into<String>,
    ) {
        self.push(
            Severity::Error,
            summary.into(),
            detail.into(),
            Some(path(attribute)),
        );
    }

    pub fn warning(&mut self, summary: impl Into<String>, detail: impl Into<String>) {
        self.push(Severity::Warning, summary.into(), detail.into(), None);
    }

    pub fn warning_at(
        &mut self,
        attribute: &str,
        summary: impl Into<String>,
        detail: impl Into<String>,
    ) {
        self.push(
            Severity::Warning,
            summary.into(),
            detail.into(),
            Some(path(attribute)),
        );
    }

    fn push(
        &mut self,
        severity: Severity,
        summary: String,
        detail: String,
        attribute: Option<AttributePath>,
    ) {
        self.0.push(Diagnostic {
            severity: severity as i32,
            summary,
            detail,
            attribute,
        });
    }

    /// An API call that failed: `what` says what was attempted ("create stream \"x\"").
    pub fn api(&mut self, what: &str, error: &ClientError) {
        tracing::warn!(what, %error, "Fanner API call failed.");
        self.error(format!("Cannot {what}"), explain(error));
    }

    /// The call's value, or `None` with an error diagnostic naming `what` was attempted.
    pub fn api_value<T>(&mut self, what: &str, result: Result<T, ClientError>) -> Option<T> {
        result.map_err(|e| self.api(what, &e)).ok()
    }

    /// Records a failed delete; an object that is already gone is what a delete wants.
    pub fn api_deleted<T>(&mut self, what: &str, result: Result<T, ClientError>) {
        match result {
            Err(e) if !e.is_not_found() => self.api(what, &e),
            _ => {}
        }
    }

    pub fn has_errors(&self) -> bool {
        self.0.iter().any(|d| d.severity == Severity::Error as i32)
    }

    pub fn into_vec(self) -> Vec<Diagnostic> {
        self.0
    }
}

pub fn path(attribute: &str) -> AttributePath {
    AttributePath {
        steps: vec![attribute_path::Step {
            selector: Some(attribute_path::step::Selector::AttributeName(
                attribute.to_owned(),
            )),
        }],
    }
}

/// What went wrong and what to do about it.
pub fn explain(error: &ClientError) -> String {
    let hint = match error {
        ClientError::Unreachable { .. } => {
            "Check the provider's `endpoint` (or FANNER_ENDPOINT) and that the Fanner control plane is running."
        }
        ClientError::Timeout(_) => {
            "The control plane is slow or overloaded; try again, and check its logs if it persists."
        }
        ClientError::BadEndpoint(_) => "Set `endpoint` to the control plane's URL.",
        ClientError::BadCaCert(_) => {
            "Point FANNER_CA_CERT at the PEM file of the CA that signed the control plane's certificate."
        }
        ClientError::Decode(_) => {
            "The endpoint answered, but not like a Fanner control plane: check `endpoint` and that the provider and server versions match."
        }
        ClientError::Api { status: 401, .. } => {
            "The token was refused: set a valid `token` (or FANNER_TOKEN), e.g. one made with `fanner token create`."
        }
        ClientError::Api { status: 403, .. } => {
            "The token's principal is not allowed to do this: objects belong to the team that created them, and only admins may act for other teams."
        }
        ClientError::Api { status: 409, .. } => {
            "It conflicts with what the control plane has now: the object exists already (import it with `terraform import`), is still in use, or changed since the plan (run `terraform plan` again)."
        }
        ClientError::Api { status: 404, .. } => {
            "It does not exist (any more) on the control plane."
        }
        ClientError::Api { .. } => "",
    };
    let mut detail = error.to_string();
    for problem in error.problems() {
        detail.push_str(&format!(
            "\n  - event {:?}: {} ({})",
            problem.event,
            problem.reason.as_str(),
            problem.message
        ));
    }
    if !hint.is_empty() {
        detail.push_str("\n\n");
        detail.push_str(hint);
    }
    detail
}
