"""Plugin contracts, the backend registry and the plugin loader.

See :mod:`nuvom.plugins.contracts` for everything a plugin author needs.
"""
