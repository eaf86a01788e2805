"""The gateway: HAProxy in front of one or more tritonservers, configured from data (``GatewayConfig``)."""
