resource "fanner_stream" "fraud_signals" {
  name = "fraud-signals"
}

# Checked when you plan: the stream's owner must own or be granted every event, and the filter
# must be a valid pattern within the 300-condition budget.
resource "fanner_subscription" "fraud_signals" {
  stream = fanner_stream.fraud_signals.name
  events = ["user_signed_up", "card_swiped"]
  # Only US adults: other events are not delivered to this stream (counted as filtered).
  filter = jsonencode({
    payload = {
      country = ["US"]
      age     = [{ numeric = [">=", 18] }]
    }
  })
  delivery_format = "envelope"
}

# A new stream hydrated with history first: every event since the start of 2026 that the
# owner's grants allow (see history_from), then live events with no gap and no duplicate.
resource "fanner_stream" "fraud_backfill" {
  name = "fraud-backfill"
}

resource "fanner_subscription" "fraud_backfill" {
  stream     = fanner_stream.fraud_backfill.name
  events     = ["card_swiped"]
  start_from = "2026-01-01T00:00:00Z"
}

output "fraud_backfill_progress" {
  value = fanner_subscription.fraud_backfill.hydration
}
