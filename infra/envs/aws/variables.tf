variable "group_name" {
  type    = string
  default = "tern-prod"
}

variable "bucket_prefix" {
  description = "Bucket names are global on AWS: include something unique to you (organisation, account id)."
  type        = string
}

variable "regions" {
  description = "Region of each deployment. This example wires three: d1 (also holds the GMK primary), d2, d3."
  type = object({
    d1 = string
    d2 = string
    d3 = string
  })
  default = {
    d1 = "eu-west-1"
    d2 = "us-east-1"
    d3 = "ap-southeast-2"
  }
}

variable "tags" {
  type    = map(string)
  default = {}
}
