resource "fanner_stream" "fraud_signals" {
  name            = "fraud-signals"
  shard_count     = 2
  retention_hours = 48
  tags            = { team = "fraud" }
}
