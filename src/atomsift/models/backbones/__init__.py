"""Backbone implementations; the registry (atomsift.models.registry) maps names to them."""
