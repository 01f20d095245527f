"""The embedded stack (`clrk up`): layout (pure), supervisor, metrics, sandboxes."""
