"""The Docker tier: engine adapter, inventory, compose bring-up and the tier component."""
