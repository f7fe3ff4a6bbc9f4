"""Engine management, health and the load balancer's probes."""
