"""Observability as code: the PromQL, the Grafana dashboard and the Prometheus rules, generated into the chart."""
