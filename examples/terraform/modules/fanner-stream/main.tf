# A consumer team's whole setup: a stream and the subscription that fills it.
resource "fanner_stream" "this" {
  name            = var.name
  shard_count     = var.shard_count
  retention_hours = var.retention_hours
}

resource "fanner_subscription" "this" {
  stream = fanner_stream.this.name
  events = var.events
}
