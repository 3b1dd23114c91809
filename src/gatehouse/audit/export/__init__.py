"""Export: copies of the audit trail, delivered to other systems (files, syslog, OpenTelemetry, webhooks).

`exporter.Exporter` runs in the server and delivers every event to each configured sink, at least once and
in order, resuming from a persisted cursor; `settings.ExportSettings` describes the sinks (docs/export.md).
This package module imports nothing, so `gatehouse.config` can import the settings cheaply.
"""
