# Adopting what a team made before it used Terraform (with the `fanner` CLI or the API):
#   terraform init
#   terraform query -generate-config-out=generated.tf
#   terraform apply   # imports everything generated.tf names, changes nothing
# Needs Terraform 1.14 or later; FANNER_ENDPOINT and FANNER_TOKEN (the team's token) configure
# the provider.
terraform {
  required_providers {
    fanner = { source = "fanner/fanner" }
  }
}

provider "fanner" {}
