"""The `fedcare` command groups, one module each; fedcare.cli assembles them."""
