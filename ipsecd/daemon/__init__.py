"""The asyncio shell: wiring, timers, signals, control socket, sd_notify, metrics."""
