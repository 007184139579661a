"""Configs and components: loading, defaults and deep-merging (schema), and the named
registries every configurable class is built from (components)."""
