# One Azure VM, two Coder agents ("main" and "dev") that both authenticate with
# the VM's attested document. coder-agent-auth exchanges that identity for each
# agent's token by name (--agent-name), at every boot.
# Structure after Coder's examples/templates/aws-multi-agent and azure-linux;
# see README.md.
terraform {
  required_providers {
    coder = {
      source = "coder/coder"
    }
    azurerm = {
      source = "hashicorp/azurerm"
    }
    cloudinit = {
      source = "hashicorp/cloudinit"
    }
    tls = {
      source = "hashicorp/tls"
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

data "coder_parameter" "location" {
  name         = "location"
  display_name = "Location"
  description  = "The Azure region to deploy the workspace in."
  default      = "eastus"
  mutable      = false
  option {
    name  = "East US"
    value = "eastus"
  }
  option {
    name  = "West Europe"
    value = "westeurope"
  }
}

data "coder_parameter" "instance_type" {
  name         = "instance_type"
  display_name = "Instance type"
  description  = "What instance type should your workspace use?"
  default      = "Standard_B2ms"
  mutable      = false
  option {
    name  = "Standard_B2ms (2 vCPU, 8 GiB RAM)"
    value = "Standard_B2ms"
  }
  option {
    name  = "Standard_D4as_v5 (4 vCPU, 16 GiB RAM)"
    value = "Standard_D4as_v5"
  }
}

provider "azurerm" {
  features {}
}

data "coder_workspace" "me" {}
data "coder_workspace_owner" "me" {}

resource "coder_agent" "main" {
  count = data.coder_workspace.me.start_count
  os    = "linux"
  arch  = "amd64"
  auth  = "azure-instance-identity"
}

resource "coder_agent" "dev" {
  count = data.coder_workspace.me.start_count
  os    = "linux"
  arch  = "amd64"
  auth  = "azure-instance-identity"
}

# Coder matches the attested document's vmId against this ID.
resource "coder_agent_instance" "main" {
  count       = data.coder_workspace.me.start_count
  agent_id    = coder_agent.main[0].id
  instance_id = azurerm_linux_virtual_machine.workspace[0].virtual_machine_id
}

resource "coder_agent_instance" "dev" {
  count       = data.coder_workspace.me.start_count
  agent_id    = coder_agent.dev[0].id
  instance_id = azurerm_linux_virtual_machine.workspace[0].virtual_machine_id
}

locals {
  prefix     = "coder-${data.coder_workspace_owner.me.name}-${data.coder_workspace.me.name}"
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
  base64_encode = true # custom_data must be base64

  boundary = "//"

  part {
    filename     = "cloud-config.yaml"
    content_type = "text/cloud-config"

    # Azure hands custom data to cloud-init at provisioning only; write_files
    # puts the script on disk, and cloud-init runs it at EVERY boot.
    content = yamlencode({
      hostname = lower(data.coder_workspace.me.name)
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

resource "azurerm_resource_group" "main" {
  name     = "${local.prefix}-resources"
  location = data.coder_parameter.location.value
  tags = {
    Coder_Provisioned = "true"
  }
}

resource "azurerm_virtual_network" "main" {
  name                = "network"
  address_space       = ["10.0.0.0/24"]
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
}

resource "azurerm_subnet" "internal" {
  name                 = "internal"
  resource_group_name  = azurerm_resource_group.main.name
  virtual_network_name = azurerm_virtual_network.main.name
  address_prefixes     = ["10.0.0.0/29"]
}

resource "azurerm_network_interface" "main" {
  name                = "nic"
  resource_group_name = azurerm_resource_group.main.name
  location            = azurerm_resource_group.main.location
  ip_configuration {
    name                          = "internal"
    subnet_id                     = azurerm_subnet.internal.id
    private_ip_address_allocation = "Dynamic"
  }
}

# azurerm requires an admin SSH key; nothing uses it.
resource "tls_private_key" "dummy" {
  algorithm = "RSA"
  rsa_bits  = 4096
}

resource "azurerm_linux_virtual_machine" "workspace" {
  count                 = data.coder_workspace.me.start_count
  name                  = "vm"
  resource_group_name   = azurerm_resource_group.main.name
  location              = azurerm_resource_group.main.location
  size                  = data.coder_parameter.instance_type.value
  admin_username        = "adminuser"
  network_interface_ids = [azurerm_network_interface.main.id]
  computer_name         = lower(data.coder_workspace.me.name)
  admin_ssh_key {
    public_key = tls_private_key.dummy.public_key_openssh
    username   = "adminuser"
  }
  os_disk {
    caching              = "ReadWrite"
    storage_account_type = "Standard_LRS"
  }
  source_image_reference {
    publisher = "Canonical"
    offer     = "ubuntu-24_04-lts"
    sku       = "server"
    version   = "latest"
  }
  custom_data = data.cloudinit_config.user_data.rendered
  tags = {
    Coder_Provisioned = "true"
  }
}

resource "coder_metadata" "workspace_info" {
  count       = data.coder_workspace.me.start_count
  resource_id = azurerm_linux_virtual_machine.workspace[0].id
  item {
    key   = "size"
    value = azurerm_linux_virtual_machine.workspace[0].size
  }
}
