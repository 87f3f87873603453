# The streams, events, grants and subscriptions team "fraud" has; `terraform query` lists them,
# and with -generate-config-out writes a resource block and an import block for each.
list "fanner_stream" "mine" {
  provider = fanner
  config {
    owner = "fraud"
  }
}

list "fanner_event" "mine" {
  provider = fanner
  config {
    owner = "fraud"
  }
}

list "fanner_grant" "given" {
  provider = fanner
  config {
    event = "fraud_scored"
  }
}

list "fanner_subscription" "mine" {
  provider = fanner
  config {
    owner = "fraud"
  }
}
