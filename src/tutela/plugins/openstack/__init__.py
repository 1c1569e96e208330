"""Protection plugins for OpenStack: projects, Nova servers, Cinder volumes and Glance images.

The graph they build (see docs/openstack.md):

    OS::Keystone::Project
    ├── OS::Nova::Server ── its attached volumes (OS::Cinder::Volume), its boot image (OS::Glance::Image)
    ├── OS::Cinder::Volume (only volumes attached to no server)
    └── OS::Glance::Image (images the project owns)

A volume attached to a server is one node, a child of the server (so its snapshot falls inside
the server's quiesce window); an image shared by several servers is one node with several parents.
All four read their connection from the provider file's `[openstack]` section (common.py).
"""

from tutela.plugins.openstack.common import IMAGE, PROJECT, SERVER, VOLUME

__all__ = ["IMAGE", "PROJECT", "SERVER", "VOLUME"]
