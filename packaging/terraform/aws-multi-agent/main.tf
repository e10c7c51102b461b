# One EC2 instance, two Coder agents ("main" and "dev") that both authenticate
# with the instance's AWS identity. coder-agent-auth exchanges that identity for
# each agent's token by name (--agent-name), at every boot.
# Structure after Coder's examples/templates/aws-multi-agent; see README.md.
terraform {
  required_providers {
    coder = {
      source = "coder/coder"
    }
    aws = {
      source = "hashicorp/aws"
    }
    cloudinit = {
      source = "hashicorp/cloudinit"
    }
  }
}

# The release: built with packaging/release.sh and hosted by you (the URL is a
# placeholder). The SHA-256 of each static binary is in the release's SHA256SUMS;
# a VM installs only the file with that SHA-256, and a new version and new sums
# here upgrade every VM at its next boot.
variable "coder_agent_auth_release_url" {
  description = "Base URL that serves coder-agent-auth-linux-amd64 and coder-agent-auth-linux-arm64 (static binaries)."
  type        = string
  default     = "https://releases.example.com/coder-agent-auth/v0.1.0"
}

variable "coder_agent_auth_version" {
  description = "The coder-agent-auth version at coder_agent_auth_release_url."
  type        = string
  default     = "0.1.0"
}

variable "coder_agent_auth_sha256" {
  description = "SHA-256 of coder-agent-auth-linux-amd64 and -arm64, from the release's SHA256SUMS."
  type        = object({ amd64 = string, arm64 = string })
  default = {
    amd64 = "REPLACE-with-the-sha256-of-coder-agent-auth-linux-amd64"
    arm64 = "REPLACE-with-the-sha256-of-coder-agent-auth-linux-arm64"
  }
}

variable "coder_agent_auth_watch" {
  description = "How often coder-agent-auth checks each agent's token (--watch); see its docs/lifecycle.md."
  type        = string
  default     = "10m"
}

data "coder_parameter" "region" {
  name         = "region"
  display_name = "Region"
  description  = "The region to deploy the workspace in."
  default      = "us-east-1"
  mutable      = false
  option {
    name  = "US East (N. Virginia)"
    value = "us-east-1"
  }
  option {
    name  = "US West (Oregon)"
    value = "us-west-2"
  }
  option {
    name  = "EU (Frankfurt)"
    value = "eu-central-1"
  }
}

data "coder_parameter" "instance_type" {
  name         = "instance_type"
  display_name = "Instance type"
  description  = "What instance type should your workspace use?"
  default      = "t3.small"
  mutable      = false
  option {
    name  = "2 vCPU, 2 GiB RAM"
    value = "t3.small"
  }
  option {
    name  = "2 vCPU, 4 GiB RAM"
    value = "t3.medium"
  }
}

provider "aws" {
  region = data.coder_parameter.region.value
}

data "coder_workspace" "me" {}
data "coder_workspace_owner" "me" {}

data "aws_ami" "ubuntu" {
  most_recent = true
  filter {
    name   = "name"
    values = ["ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*"]
  }
  filter {
    name   = "virtualization-type"
    values = ["hvm"]
  }
  owners = ["099720109477"] # Canonical
}

resource "coder_agent" "main" {
  count = data.coder_workspace.me.start_count
  os    = "linux"
  arch  = "amd64"
  auth  = "aws-instance-identity"
}

resource "coder_agent" "dev" {
  count = data.coder_workspace.me.start_count
  os    = "linux"
  arch  = "amd64"
  auth  = "aws-instance-identity"
}

# Tie both agents to this instance's ID, which is what Coder matches the
# signed identity document against. The user data carries no agent secret.
resource "coder_agent_instance" "main" {
  count       = data.coder_workspace.me.start_count
  agent_id    = coder_agent.main[0].id
  instance_id = aws_instance.workspace.id
}

resource "coder_agent_instance" "dev" {
  count       = data.coder_workspace.me.start_count
  agent_id    = coder_agent.dev[0].id
  instance_id = aws_instance.workspace.id
}

locals {
  hostname   = lower(data.coder_workspace.me.name)
  linux_user = "coder"

  # Runs at every boot: for each agent, `coder-agent-auth --agent-name NAME
  # --watch` with `coder agent` as its child, the token kept current.
  per_boot_script = templatefile("${path.module}/coder-agents.sh.tftpl", {
    access_url  = data.coder_workspace.me.access_url
    release_url  = var.coder_agent_auth_release_url
    version      = var.coder_agent_auth_version
    sha256_amd64 = var.coder_agent_auth_sha256.amd64
    sha256_arm64 = var.coder_agent_auth_sha256.arm64
    watch        = var.coder_agent_auth_watch
    linux_user   = local.linux_user
  })
}

data "cloudinit_config" "user_data" {
  gzip          = false
  base64_encode = false

  boundary = "//"

  part {
    filename     = "cloud-config.yaml"
    content_type = "text/cloud-config"

    # write_files runs once per instance; the file it writes into
    # /var/lib/cloud/scripts/per-boot/ is then run by cloud-init at EVERY boot.
    content = yamlencode({
      hostname = local.hostname
      users = [
        "default",
        {
          name   = local.linux_user
          shell  = "/bin/bash"
          sudo   = "ALL=(ALL) NOPASSWD:ALL"
          groups = "sudo"
        },
      ]
      write_files = [
        {
          path        = "/var/lib/cloud/scripts/per-boot/50-coder-agents.sh"
          permissions = "0755"
          content     = local.per_boot_script
        },
      ]
    })
  }
}

resource "aws_instance" "workspace" {
  ami               = data.aws_ami.ubuntu.id
  availability_zone = "${data.coder_parameter.region.value}a"
  instance_type     = data.coder_parameter.instance_type.value

  user_data = data.cloudinit_config.user_data.rendered
  tags = {
    Name = "coder-${data.coder_workspace_owner.me.name}-${data.coder_workspace.me.name}"
    # Required if you are using Coder's example IAM policy.
    Coder_Provisioned = "true"
  }
  lifecycle {
    ignore_changes = [ami]
  }
}

resource "coder_metadata" "workspace_info" {
  resource_id = aws_instance.workspace.id
  item {
    key   = "region"
    value = data.coder_parameter.region.value
  }
  item {
    key   = "instance type"
    value = aws_instance.workspace.instance_type
  }
}

# Stopping the workspace stops the instance; starting it boots the same
# instance again, which is why the exchange runs at every boot.
resource "aws_ec2_instance_state" "workspace" {
  instance_id = aws_instance.workspace.id
  state       = data.coder_workspace.me.transition == "start" ? "running" : "stopped"
}
