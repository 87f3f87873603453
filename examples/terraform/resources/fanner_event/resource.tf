resource "fanner_event" "signup" {
  name           = "user_signed_up"
  classification = "pii"
  description    = "A user finished signup."
}
