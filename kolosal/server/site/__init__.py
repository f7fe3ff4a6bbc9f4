"""The built-in chat page, the API's own description and the Prometheus scrape."""
