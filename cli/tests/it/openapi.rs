//! The served OpenAPI document against the server it describes: schemathesis generates requests
//! from it and checks that no answer is a 5xx, that every status is one the document declares
//! for that operation, and that every body matches its declared schema.

use std::path::Path;
use std::process::Command;

use crate::Server;

#[test]
fn schemathesis_finds_the_document_true() {
    let Some(python) = std::env::var_os("FANNER_PYTHON") else {
        eprintln!(
            "SKIPPED: FANNER_PYTHON is not set; run `eval \"$(bash scripts/setup-tools)\"` for the API fuzzing tier"
        );
        return;
    };
    let schemathesis = Path::new(&python).with_file_name("schemathesis");
    if !schemathesis.exists() {
        eprintln!("SKIPPED: schemathesis is not installed; run scripts/setup-tools");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path());
    let output = Command::new(&schemathesis)
        .arg("run")
        .arg(format!("{}/v1/openapi.json", server.endpoint))
        .args(["--header"])
        .arg(format!("Authorization: Bearer {}", server.admin_token))
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,response_schema_conformance",
            // A fixed seed and a small budget per operation: the same cases every run, in seconds.
            "--seed",
            "1",
            "--max-examples",
            "10",
            "--workers",
            "2",
            "--request-timeout",
            "10",
            // The route table's long poll holds a request up to `wait_ms` (60 s), and a tail
            // streams until its `limit` or `idle_ms`, by design: their statuses and parameters
            // are checked in the control plane's own tests.
            "--exclude-path",
            "/v1/routes",
            "--exclude-path",
            "/v1/streams/{name}/records",
        ])
        .current_dir(dir.path())
        .output()
        .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found faults:\n{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("passed"), "{stdout}");
}
