resource "fanner_event" "signup" {
  name           = "user_signed_up"
  classification = "pii"
}

# Lets the fraud team read signups until mid-2027, and their history since 2026 (without
# history_from, only events from the grant's creation on), without the SSN; the user id arrives
# as a keyed hash, so fraud can still join on it without learning it.
resource "fanner_grant" "fraud_reads_signup" {
  event        = fanner_event.signup.name
  grantee      = "fraud"
  reason       = "Fraud scoring at signup."
  expires_at   = "2027-06-30T00:00:00Z"
  history_from = "2026-01-01T00:00:00Z"
  redact       = ["payload.ssn", "user_id"]
  redact_mode  = "hash"
}
