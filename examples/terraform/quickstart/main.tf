# Against `fanner serve`: export FANNER_TOKEN="$(cat <data-dir>/admin.token)", then
# terraform init && terraform apply.
terraform {
  required_providers {
    fanner = { source = "fanner/fanner" }
  }
}

provider "fanner" {}

resource "fanner_event" "signup" {
  name           = "user_signed_up"
  classification = "pii"
  description    = "A user finished signup."
}

resource "fanner_event" "card_swiped" {
  name           = "card_swiped"
  classification = "internal"
  description    = "A card was used at a terminal."
}

module "fraud_signals" {
  source = "../modules/fanner-stream"
  name   = "fraud-signals"
  events = [fanner_event.signup.name, fanner_event.card_swiped.name]
}

data "fanner_access" "signup" {
  event      = fanner_event.signup.name
  depends_on = [module.fraud_signals]
}

output "stream" {
  value = module.fraud_signals.backing_id
}

output "signup_streams" {
  value = data.fanner_access.signup.subscriptions[*].stream
}
