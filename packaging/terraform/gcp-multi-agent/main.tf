# One Compute Engine VM, two Coder agents ("main" and "dev") that both
# authenticate with the VM's Google identity token. coder-agent-auth exchanges
# that identity for each agent's token by name (--agent-name), at every boot.
# Structure after Coder's examples/templates/aws-multi-agent and gcp-linux;
# see README.md.
terraform {
  required_providers {
    coder = {
      source = "coder/coder"
    }
    google = {
      source = "hashicorp/google"
    }
    cloudinit = {
      source = "hashicorp/cloudinit"
    }
  }
}

variable "project_id" {
  description = "Which Google Compute Project should your workspace live in?"
  type        = string
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

data "coder_parameter" "zone" {
  name         = "zone"
  display_name = "Zone"
  description  = "Which zone should your workspace live in?"
  type         = "string"
  default      = "us-central1-a"
  mutable      = false
  option {
    name  = "North America (Central)"
    value = "us-central1-a"
  }
  option {
    name  = "Europe (West)"
    value = "europe-west4-b"
  }
}

provider "google" {
  zone    = data.coder_parameter.zone.value
  project = var.project_id
}

data "google_compute_default_service_account" "default" {}

data "coder_workspace" "me" {}
data "coder_workspace_owner" "me" {}

resource "coder_agent" "main" {
  count = data.coder_workspace.me.start_count
  os    = "linux"
  arch  = "amd64"
  auth  = "google-instance-identity"
}

resource "coder_agent" "dev" {
  count = data.coder_workspace.me.start_count
  os    = "linux"
  arch  = "amd64"
  auth  = "google-instance-identity"
}

# Coder matches the identity token's instance_id claim against this ID.
resource "coder_agent_instance" "main" {
  count       = data.coder_workspace.me.start_count
  agent_id    = coder_agent.main[0].id
  instance_id = google_compute_instance.workspace[0].instance_id
}

resource "coder_agent_instance" "dev" {
  count       = data.coder_workspace.me.start_count
  agent_id    = coder_agent.dev[0].id
  instance_id = google_compute_instance.workspace[0].instance_id
}

# The home disk outlives the VM, which is deleted when the workspace stops.
resource "google_compute_disk" "root" {
  name  = "coder-${data.coder_workspace.me.id}-root"
  type  = "pd-ssd"
  image = "ubuntu-os-cloud/ubuntu-2404-lts-amd64"
  lifecycle {
    ignore_changes = [name, image]
  }
}

locals {
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

resource "google_compute_instance" "workspace" {
  count        = data.coder_workspace.me.start_count
  name         = "coder-${lower(data.coder_workspace_owner.me.name)}-${lower(data.coder_workspace.me.name)}"
  machine_type = "e2-medium"
  network_interface {
    network = "default"
    access_config {
      // Ephemeral public IP
    }
  }
  boot_disk {
    auto_delete = false
    source      = google_compute_disk.root.name
  }
  service_account {
    email  = data.google_compute_default_service_account.default.email
    scopes = ["cloud-platform"]
  }
  # Ubuntu's GCE images run cloud-init on the `user-data` metadata key.
  metadata = {
    user-data = data.cloudinit_config.user_data.rendered
  }
}

resource "coder_metadata" "workspace_info" {
  count       = data.coder_workspace.me.start_count
  resource_id = google_compute_instance.workspace[0].id
  item {
    key   = "type"
    value = google_compute_instance.workspace[0].machine_type
  }
}
