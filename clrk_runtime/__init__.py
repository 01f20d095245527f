"""What the running services share and the pure core may not do: the OpenTelemetry
record writer, structured logs, and the generated protobuf modules."""
