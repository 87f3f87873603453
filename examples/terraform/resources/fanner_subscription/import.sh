# A subscription is imported by its id.
terraform import fanner_subscription.fraud_signals 7b1e2d4c-0a9f-4f3e-8c61-5d2a9e0b7c13
