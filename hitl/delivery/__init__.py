"""Delivery: compiling canvases, the transactional outbox, the journal of steps, wait options."""
