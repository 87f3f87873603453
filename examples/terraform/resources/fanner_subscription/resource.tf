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
