"""The host side of the device: the backend daemon, its ports, and the offload service."""
