# A grant is imported by its id (see `fanner grant list` or the fanner_access data source).
terraform import fanner_grant.fraud_reads_signup 2f0c6a9e-6d55-4c5e-9a57-3f1d2c9b8e41
