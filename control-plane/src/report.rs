//! The access-review document (`fanner review report --format html`): one self-contained HTML
//! file that names the audit chain's head hash, so the evidence is tied to the tamper-evident log.

use api::AccessReview;
use askama::Template;

#[derive(Template)]
#[template(path = "report.html")]
struct Report<'a> {
    review: &'a AccessReview,
}

pub fn html(review: &AccessReview) -> Result<String, askama::Error> {
    Report { review }.render()
}
