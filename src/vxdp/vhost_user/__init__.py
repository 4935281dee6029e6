"""vhost-user: a sans-IO codec of the messages virtio-net needs, the backend (device) and
frontend (driver) session state machines on top, and a thin fd-passing socket layer.

Layering inside the package: ``messages`` (wire structs, no state) <- ``connection``
(framing, fd attribution) <- ``backend`` / ``frontend`` (session rules) ; ``transport`` is
the only module that touches sockets. Spec: QEMU ``docs/interop/vhost-user.rst``.
"""
