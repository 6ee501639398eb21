"""The gRPC surface: servicers that validate, convert and delegate to the executor."""
