resource "fanner_stream" "fraud_signals" {
  name = "fraud-signals"
}

# Checked when you plan: the stream's owner must own or be granted every event.
resource "fanner_subscription" "fraud_signals" {
  stream = fanner_stream.fraud_signals.name
  events = ["user_signed_up", "card_swiped"]
}
