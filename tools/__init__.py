"""Tools for people (`python -m clerk_sync COMMAND`): never uploaded, never imported by the functions."""
