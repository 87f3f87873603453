terraform {
  required_providers {
    fanner = { source = "fanner/fanner" }
  }
}

variable "fanner_token" {
  type      = string
  sensitive = true
}

# The token decides which team Terraform acts for: events and streams belong to it.
provider "fanner" {
  endpoint = "http://127.0.0.1:7878" # or FANNER_ENDPOINT
  token    = var.fanner_token        # or FANNER_TOKEN

  # Plans warn about grants ending within this many days (default 14).
  expiry_warning_days = 30
}
