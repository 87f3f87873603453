# Who reads signups, through which grants and streams.
data "fanner_access" "signup" {
  event = "user_signed_up"
}

output "signup_readers" {
  value = data.fanner_access.signup.readers
}

output "signup_streams" {
  value = data.fanner_access.signup.subscriptions[*].stream
}
