"""virtio data structures over guest memory: memory regions, split virtqueues, virtio-net (no sockets)."""
