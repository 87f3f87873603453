variable "name" {
  description = "The stream's name."
  type        = string
}

variable "events" {
  description = "The events the stream receives; the caller's team must own or be granted each."
  type        = set(string)
}

variable "shard_count" {
  description = "Shards of the stream."
  type        = number
  default     = 1
}

variable "retention_hours" {
  description = "How long records stay readable, in hours."
  type        = number
  default     = 24
}
