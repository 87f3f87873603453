data "fanner_event" "signup" {
  name = "user_signed_up"
}

output "signup_classification" {
  value = data.fanner_event.signup.classification
}
