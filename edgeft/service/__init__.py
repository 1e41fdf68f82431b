"""Running edgeft as a long-lived service: systemd notification, logs, Prometheus metrics, status."""
