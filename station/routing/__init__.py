"""Routing: the hook specifications, the plugin manager, the routes file and the router
that applies them to a series."""
