terraform {
  required_providers {
    fanner = { source = "fanner/fanner" }
  }
}
