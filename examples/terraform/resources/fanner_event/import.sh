# An event is imported by its name.
terraform import fanner_event.signup user_signed_up
