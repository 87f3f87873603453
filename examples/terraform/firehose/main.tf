# The managed alternative to the persister's own object writer: an Amazon Data Firehose
# delivery stream with dynamic partitioning that lays the lake out exactly as the persister
# does, `<prefix>/<event_name>/yyyy-MM-dd:hh/`, keyed on the envelope's event time.
#
# Point the persister at it with the Firehose sink and `format = "ndjson"`: each record is one
# NDJSON line (the `EnvelopeView` shape) ending in a newline, so the jq query below can read
# `event_name` and `event_time` and the delivered objects stay one record per line. Records
# Firehose cannot place (no event time) go to the error prefix.
#
# Firehose buffers for `buffering_interval` seconds (at least 60 with dynamic partitioning) and
# retries on its own, so delivery through it is at least once and a minute or more behind; the
# persister's S3 sink writes each event exactly once within seconds.

variable "bucket_name" {
  description = "The lake bucket."
  type        = string
}

variable "base_prefix" {
  description = "Every object key starts with this prefix (the persister's `base_prefix`)."
  type        = string
  default     = "events"
}

variable "delivery_stream_name" {
  description = "The delivery stream the persister's Firehose sink writes to."
  type        = string
  default     = "fanner-lake"
}

resource "aws_s3_bucket" "lake" {
  bucket = var.bucket_name
}

data "aws_iam_policy_document" "assume_firehose" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["firehose.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "firehose" {
  name               = "${var.delivery_stream_name}-delivery"
  assume_role_policy = data.aws_iam_policy_document.assume_firehose.json
}

data "aws_iam_policy_document" "write_lake" {
  statement {
    actions = [
      "s3:AbortMultipartUpload",
      "s3:GetBucketLocation",
      "s3:ListBucket",
      "s3:ListBucketMultipartUploads",
      "s3:PutObject",
    ]
    resources = [aws_s3_bucket.lake.arn, "${aws_s3_bucket.lake.arn}/*"]
  }
}

resource "aws_iam_role_policy" "write_lake" {
  name   = "write-lake"
  role   = aws_iam_role.firehose.id
  policy = data.aws_iam_policy_document.write_lake.json
}

resource "aws_kinesis_firehose_delivery_stream" "lake" {
  name        = var.delivery_stream_name
  destination = "extended_s3"

  extended_s3_configuration {
    role_arn   = aws_iam_role.firehose.arn
    bucket_arn = aws_s3_bucket.lake.arn

    # The same layout as the persister's object keys.
    prefix              = "${var.base_prefix}/!{partitionKeyFromQuery:event_name}/!{partitionKeyFromQuery:hour}/"
    error_output_prefix = "${var.base_prefix}/_errors/firehose/!{firehose:error-output-type}/"

    # Dynamic partitioning needs at least 64 MiB buffers; Firehose flushes every 60 s at the
    # soonest.
    buffering_size     = 64
    buffering_interval = 60
    compression_format = "GZIP"
    file_extension     = ".ndjson.gz"
    custom_time_zone   = "UTC"
    s3_backup_mode     = "Disabled"

    dynamic_partitioning_configuration {
      enabled = true
    }

    processing_configuration {
      enabled = true

      # Reads the partition keys from each NDJSON line: the event name, and the hour of the
      # event time (`2024-05-01T13:45:00Z` gives `2024-05-01:13`).
      processors {
        type = "MetadataExtraction"
        parameters {
          parameter_name  = "MetadataExtractionQuery"
          parameter_value = "{event_name: .event_name, hour: (.event_time[0:10] + \":\" + .event_time[11:13])}"
        }
        parameters {
          parameter_name  = "JsonParsingEngine"
          parameter_value = "JQ-1.6"
        }
      }
    }
  }
}

output "delivery_stream_name" {
  description = "Set this as the persister's Firehose delivery stream."
  value       = aws_kinesis_firehose_delivery_stream.lake.name
}
