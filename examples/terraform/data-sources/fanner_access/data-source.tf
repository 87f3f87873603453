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

# How far back each grantee may read history.
output "signup_history" {
  value = { for g in data.fanner_access.signup.grants : g.grantee => g.history_from if g.status == "active" }
}
