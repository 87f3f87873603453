# A stream is imported by its name.
terraform import fanner_stream.fraud_signals fraud-signals
