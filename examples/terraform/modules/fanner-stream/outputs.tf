output "stream" {
  description = "The stream's name."
  value       = fanner_stream.this.name
}

output "backing_id" {
  description = "The backing stream's identifier (its ARN on Kinesis): what consumers read from."
  value       = fanner_stream.this.backing_id
}

output "subscription_id" {
  description = "The subscription's id."
  value       = fanner_subscription.this.id
}
